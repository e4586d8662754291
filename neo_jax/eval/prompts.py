"""The release's benchmark prompts: ``NEOChat.build_prompt`` and ``reorganize_prompt``.

Sources (plain Python, re-stated here; ``tests/test_eval_prompts.py`` runs the
release's own functions on the same rows when ``NEO_RELEASE_DIR`` is set):

* NEO (``style="neo"``): VLMEvalKit/vlmeval/vlm/neo/neo_chat.py ``build_prompt`` and
  utils.py ``build_multi_choice_prompt`` / ``reorganize_prompt``;
* NEO-ov (``style="neo_ov"``): VLMEvalKit_ov/vlmeval/vlm/neo/neo_chat.py and utils.py
  (the multiple-choice question loses its ``<image>`` tags, MMMU_DEV_VAL has its own
  prompt, several images follow the text as ``<image>\\n`` each).

A row is a mapping of a VLMEvalKit TSV row's columns (``vlmevalkit.read_tsv``): missing
values are absent or None. The prompt types are VLMEvalKit's ``DATASET_TYPE``: "MCQ",
"Y/N", "VQA" (others get the bare question). Not reproduced: the ``USE_COT=1`` and MPO
prompt variants (off in the authors' scripts) and the GUI datasets.
"""

from __future__ import annotations

import re
import string
from typing import Any, Mapping

STYLES = ("neo", "neo_ov")
MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."
MCQ_SUFFIX_CN = "请直接回答选项字母。"
NO_OPTION_SUFFIX = "Answer the question directly."
NO_OPTION_SUFFIX_CN = "请直接回答问题。"
SHORT_ANSWER = "Answer the question using a single word or phrase."
YES_NO = "Please answer yes or no."
DETAIL = "Answer this question in detail."
# VQA datasets (by name part) whose prompt gets SHORT_ANSWER, the bare question, or DETAIL.
_VQA_SHORT = ("OCRVQA", "TextVQA", "ChartQA", "DocVQA", "InfoVQA", "OCRBench", "DUDE",
              "SLIDEVQA", "GQA", "MMLongBench_DOC")
_VQA_BARE = ("MathVista", "MathVision", "VCR", "MTVQA", "MMVet", "MMDU", "CRPE", "MIA-Bench",
             "MM-Math", "DynaMath", "QSpatial", "WeMath", "LogicVista", "MM-IFEval", "ChartMimic")
_VQA_DETAIL = ("LLaVABench", "WildVision")
# NEO-ov's MMMU_DEV_VAL instructions by the row's question_type.
_MMMU_OV = {
    "multiple-choice": (
        "Answer the preceding multiple choice question. The last line of your response should "
        "follow this format: 'Answer: \\boxed LETTER' (without quotes), where LETTER is one of "
        "the options. If you are uncertain or the problem is too complex, make a reasoned guess "
        "based on the information provided. Avoid repeating steps indefinitely\u2014provide your "
        "best guess even if unsure. Think step by step logically, considering all relevant "
        "information before answering.\n"),
    "open": ("Your output should be divided into two parts: First, reason about the correct "
             "answer. Then write the answer in the following format where X is only the answer "
             "and nothing else: \"ANSWER: X\""),
}
# The system message each release's VLMEvalKit model sets (cot_prompt_version "v1").
SYSTEM = {"neo": "", "neo_ov": "Reason step by step."}


class PromptError(ValueError):
  """A row the release's prompt function cannot build (a missing column)."""


def _has(row: Mapping[str, Any], key: str) -> bool:
  v = row.get(key)
  return v is not None and not (isinstance(v, float) and v != v)


def _in(parts, name: str) -> bool:
  """VLMEvalKit's ``listinstr``: any of ``parts`` is a substring of ``name``."""
  return any(p in name for p in parts)


def is_chinese(text: str) -> bool:
  """VLMEvalKit's ``cn_string``: the text holds a CJK unified ideograph."""
  return re.search("[\u4e00-\u9fff]", text) is not None


def options(row: Mapping[str, Any]) -> dict[str, str]:
  """``{letter: option text}`` of the columns A..Z that hold a value, in letter order."""
  return {c: str(row[c]) for c in string.ascii_uppercase if _has(row, c)}


def multi_choice_prompt(row: Mapping[str, Any], dataset: str, style: str = "neo") -> str:
  """``build_multi_choice_prompt``: hint line, question, ``X. option`` lines, suffix.

  NEO-ov first removes ``<image>`` tags from the question (except MUIRBench).
  """
  question = str(row["question"])
  if style == "neo_ov" and "MUIRBench" not in dataset:
    question = question.replace("<image>", "").strip()
  if _has(row, "hint"):
    question = f"{row['hint']}\n{question}"
  opts = options(row)
  text = question + "".join(f"\n{k}. {v}" for k, v in opts.items())
  cn = is_chinese(text)
  if opts:
    return text + "\n" + (MCQ_SUFFIX_CN if cn else MCQ_SUFFIX)
  return text + "\n" + (NO_OPTION_SUFFIX_CN if cn else NO_OPTION_SUFFIX)


def _mmmu_ov_prompt(row: Mapping[str, Any]) -> str:
  if not (_has(row, "id") and _has(row, "question_type")):
    raise PromptError("NEO-ov's MMMU_DEV_VAL prompt needs the 'id' and 'question_type' columns")
  if str(row["question_type"]) not in _MMMU_OV:
    raise PromptError(f"unknown MMMU question_type {row['question_type']!r}")
  question = str(row["question"]) + "".join(f"\n{k}. {v}" for k, v in options(row).items())
  return _MMMU_OV[str(row["question_type"])] + "\n" + question


def question_prompt(row: Mapping[str, Any], dataset: str, dataset_type: str,
                    style: str = "neo") -> str:
  """The text ``NEOChat.build_prompt`` makes of a row (before the images are placed).

  Args:
    row: the TSV row; dataset: its name (the TSV's file name, e.g. ``MMBench_DEV_EN``);
    dataset_type: "MCQ", "Y/N", "VQA" or another VLMEvalKit type; style: ``STYLES``.
  Raises:
    PromptError: a row without ``question`` or a column its prompt needs.
  """
  if style not in STYLES:
    raise ValueError(f"style {style!r} is not one of {STYLES}")
  if not _has(row, "question"):
    raise PromptError("the row has no question")
  question = str(row["question"])
  if dataset_type == "Y/N":
    if "MME" in dataset:
      return f"{question} {SHORT_ANSWER}"
    if _in(("HallusionBench", "AMBER"), dataset):
      return f"{question} {YES_NO} {SHORT_ANSWER}"
    return question
  if dataset_type == "MCQ":
    if style == "neo_ov" and "MMMU_DEV_VAL" in dataset:
      return _mmmu_ov_prompt(row)
    return multi_choice_prompt(row, dataset, style)
  if dataset_type == "VQA":
    if _in(_VQA_DETAIL, dataset):
      return f"{question}\n{DETAIL}"
    if _in(_VQA_SHORT, dataset):
      return f"{question}\n{SHORT_ANSWER}"
    if "MathVerse" in dataset:
      return question.replace("please directly answer the question and", "please")
    if _in(_VQA_BARE, dataset):
      return question
    return f"{question}\n{SHORT_ANSWER}"
  return question


def place_images(text: str, num_images: int, dataset: str, style: str = "neo") -> str:
  """``reorganize_prompt`` for a message of one text followed by ``num_images`` images,
  then ``NEOChatModel.chat``'s rule (``<image>\\n`` first when there is an image and
  no tag): the user turn with one ``<image>`` tag per image.

  NEO: one image -> ``<image>\\n{text}``; several -> ``Image-1: <image>\\n`` ... then the
  text. NEO-ov: several -> the text, then ``<image>\\n`` per image. MUIRBench keeps its
  own tags (``Image-k: <image>`` lines in NEO, ``<Image-k>: <image>`` in NEO-ov).
  """
  n = num_images
  if n == 0:
    return text
  if "MUIRBench" in dataset:
    if style == "neo":
      body = text.replace(" ".join(["<image>"] * n), "")
      for i in range(n):
        body = body.replace("<image>", f"<Image-{i + 1}>", 1)
      prompt = "".join(f"Image-{i + 1}: <image>\n" for i in range(n)) + body
    else:
      placeholders = "".join(f"<Image-{i + 1}>" for i in range(n))
      prompt = "".join(f"<Image-{i + 1}>: <image>\n" for i in range(n)) + text + placeholders
  elif "bmmr" in dataset.lower():
    prompt = text                          # the release adds no image tag here
  elif n == 1:
    prompt = "<image>\n" + text
  elif style == "neo":
    prompt = "".join(f"Image-{i + 1}: <image>\n" for i in range(n)) + text
  else:
    prompt = text + "<image>\n" * n
  if "<image>" not in prompt:
    prompt = "<image>\n" + prompt
  return prompt
