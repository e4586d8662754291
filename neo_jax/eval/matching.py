"""VLMEvalKit's exact-matching answer extraction and VQA scores, re-stated.

* Multiple choice (vlmeval/utils/matching_util.py ``can_infer``): the one option letter
  among the answer's words (after ``.()[],:;!*#{}`` become spaces) and within its last
  four words, else the one option whose (lower-cased) text the answer contains, else no
  answer; a refusal phrase is option "Z".
* Yes / no (vlmeval/dataset/utils/yorn.py ``YOrN_Extraction``): "Yes" if the
  punctuation-processed words hold "yes" and not "no", "No" the other way, else "Unknown".
* VQA (vlmeval/dataset/utils/vqa_eval.py ``process_line``): the VQA-v2 answer
  normalisation (punctuation, number words, articles, contractions) with the VQA score,
  ANLS, relaxed accuracy (ChartQA) or exact accuracy, chosen by the dataset name;
  OCRBench's substring rule (image_vqa.py ``OCRBench.evaluate``).

No judge model: VLMEvalKit's ``exact_matching`` mode.
"""

from __future__ import annotations

import ast
import re
from typing import Any, Mapping

_OPTION_PUNCT = ".()[],:;!*#{}"
_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
             "I'm sorry, but without the image provided", "Cannot determine the answer")


def infer_option(answer: str, choices: Mapping[str, Any]) -> str | None:
  """The option letter ``answer`` names by its letter (``can_infer_option``), or None."""
  if "Failed to obtain answer via API" in answer:
    return None
  if any(r in answer for r in _REFUSALS):
    return "Z"
  words = answer.translate(str.maketrans(_OPTION_PUNCT, " " * len(_OPTION_PUNCT))).split()
  named = [c for c in choices if c in words]
  if len(named) == 1:
    return named[0] if words.index(named[0]) > len(words) - 5 else None
  if not named and "Z" in words:
    return "Z"
  return None


def infer_text(answer: str, choices: Mapping[str, Any]) -> str | None:
  """The one option whose text the answer contains, case-insensitively, unless the answer
  is longer than twice all option texts together (``can_infer_text``), or None."""
  answer = answer.lower()
  if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
    return None
  hits = [k for k, v in choices.items() if str(v).lower() in answer]
  return hits[0] if len(hits) == 1 else None


def infer_choice(answer: Any, choices: Mapping[str, Any]) -> str | None:
  """``can_infer``: by letter, else by option text; None when neither decides."""
  answer = str(answer)
  return infer_option(answer, choices) or infer_text(answer, choices)


def process_punctuation(text: str) -> str:
  """VQA-v2's punctuation rule (vlmeval/smp/misc.py ``process_punctuation``): each mark
  is deleted when it touches a space (or the text has a digit,digit comma), else becomes
  a space; then a full stop not between digits is deleted (the first 32 of them: the
  release passes ``re.UNICODE`` as ``re.sub``'s count)."""
  out = text
  comma_digits = re.search(r"(\d)(,)(\d)", text) is not None
  for p in ";/[]\"{}()=+\\_-><@`,?!":
    out = out.replace(p, "" if (p + " " in text or " " + p in text or comma_digits) else " ")
  return re.sub(r"(?<!\d)\.(?!\d)", "", out, count=int(re.UNICODE))


def yes_no(answer: str) -> str:
  """``YOrN_Extraction``: "Yes", "No" or "Unknown"."""
  words = process_punctuation(answer.lower()).split()
  if "yes" in words and "no" not in words:
    return "Yes"
  if "no" in words and "yes" not in words:
    return "No"
  return "Unknown"


# VQA-v2's contractions: each form below, with one of its apostrophes left out, is
# written back with it (``_process_digit_article``'s table), except "lets" and "shes".
_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've "
    "hasn't haven't he'd he'd've he's how'd how'll how's I'd've I'm I've isn't it'd it'd've "
    "it'll let's ma'am mightn't mightn't've might've mustn't must've needn't not've o'clock "
    "oughtn't 'ow's'at shan't she'd've she's should've shouldn't shouldn't've somebody'd've "
    "somebody'll somebody's someone'd someone'd've someone'll someone's something'd "
    "something'd've something'll that's there'd there'd've there're there's they'd they'd've "
    "they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's "
    "what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're "
    "why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've "
    "you'll you're you've").split()
_CONTRACTIONS = {f[:i] + f[i + 1:]: f for f in _CONTRACTED for i, c in enumerate(f) if c == "'"}
for _w in ("lets", "shes"):
  del _CONTRACTIONS[_w]
_CONTRACTIONS["somebody'd"] = "somebodyd"       # sic, in VQA-v2's table
_NUMBERS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}
_NUMBERS["none"] = "0"
_ARTICLES = ("a", "an", "the")


def normalize_vqa(answer: str) -> str:
  """``process_answer``: whitespace, punctuation, number words to digits, no articles,
  contractions with their apostrophes (lower-case)."""
  text = process_punctuation(answer.replace("\n", " ").replace("\t", " ").strip())
  words = [_NUMBERS.get(w, w) for w in text.lower().split()]
  return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def _levenshtein(a: str, b: str) -> int:
  prev = list(range(len(a) + 1))
  for j, cb in enumerate(b, 1):
    cur = [j]
    for i, ca in enumerate(a, 1):
      cur.append(prev[i - 1] if ca == cb else 1 + min(prev[i - 1], prev[i], cur[-1]))
    prev = cur
  return prev[-1]


def anls_distance(reference: str, prediction: str) -> float:
  """Normalised Levenshtein distance (``anls_compute``; 0 = equal)."""
  a = " ".join(reference.strip().lower().split())
  b = " ".join(prediction.strip().lower().split())
  longest = max(len(reference.upper()), len(prediction.upper()))
  return 0.0 if longest == 0 else _levenshtein(a, b) / longest


def relaxed_correct(reference: str, prediction: str, tolerance: float = 0.05) -> bool:
  """ChartQA's relaxed accuracy (Methani et al. 2020): numbers (``x%`` = x / 100) within
  5 % of a non-zero reference, other answers equal ignoring case."""
  def number(s):
    try:
      return float(s.rstrip("%")) / 100 if s.endswith("%") else float(s)
    except ValueError:
      return None
  p, r = number(prediction), number(reference)
  if p is not None and r:
    return abs(p - r) / abs(r) <= tolerance
  return prediction.lower() == reference.lower()


def references(answer: Any) -> list[str]:
  """The reference answers of a row: a list literal (VQA-v2's ten answers) or one."""
  if isinstance(answer, (list, tuple)):
    return [str(a) for a in answer]
  text = str(answer)
  if text.startswith("["):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = None
    if isinstance(value, list):
      return [str(a) for a in value]
  return [text]


def vqa_method(dataset: str) -> str:
  """The VQA score of a dataset: ``ImageVQADataset.evaluate``'s choice by name,
  ``OCRBench.evaluate``'s substring rule, else "exact" (ours: VLMEvalKit scores other
  VQA sets with their own judges or, for a custom TSV, not at all; this is
  ``process_line``'s plain branch, the normalised answers equal)."""
  if "TextVQA" in dataset:
    return "vqa_score"
  if "ChartQA" in dataset:
    return "relaxed_accuracy"
  if "OCRVQA" in dataset or "GQA" in dataset:
    return "accuracy"
  if "DocVQA" in dataset or "InfoVQA" in dataset:
    return "anls"
  if "OCRBench" in dataset:
    return "ocrbench"
  return "exact"


def ocrbench_hit(prediction: str, refs: list[str], category: str) -> bool:
  """``OCRBench.evaluate``: a reference occurs in the prediction (lower-cased, stripped,
  newlines as spaces; handwritten formulas: all spaces removed, case kept)."""
  if category == "Handwritten Mathematical Expression Recognition":
    squeeze = lambda t: t.strip().replace("\n", " ").replace(" ", "")
    return any(squeeze(r) in squeeze(prediction) for r in refs)
  flat = lambda t: t.lower().strip().replace("\n", " ")
  return any(flat(r) in flat(prediction) for r in refs)


def vqa_score(prediction: str, answer: Any, dataset: str, anls_threshold: float = 0.5,
              category: str = "") -> float:
  """One row's VQA score in [0, 1] (``process_line`` + ``hit_calculate``; OCRBench's rule;
  ``vqa_method``)."""
  refs, method = references(answer), vqa_method(dataset)
  if method == "ocrbench":
    return float(ocrbench_hit(prediction, refs, category))
  if method == "vqa_score":      # min(1, #other annotators agreeing / 3), averaged
    gt, pred = [normalize_vqa(r) for r in refs], normalize_vqa(prediction)
    scores = [min(1.0, sum(o == pred for j, o in enumerate(gt) if j != i) / 3)
              for i in range(len(gt))]
    return sum(scores) / len(scores)
  if method == "anls":
    d = min(anls_distance(r, prediction) for r in refs)
    return 0.0 if 1 - d < anls_threshold else 1 - d
  if method == "relaxed_accuracy":
    return float(max(relaxed_correct(r, prediction.strip()) for r in refs))
  if method == "accuracy":     # the best reference for OCRVQA, their mean for GQA
    p = prediction.strip().lower()
    hits = [float(r.strip().lower() == p) for r in refs]
    return max(hits) if "OCRVQA" in dataset else sum(hits) / len(hits)
  pred = normalize_vqa(prediction)
  return sum(normalize_vqa(r) == pred for r in refs) / len(refs)
