"""VLMEvalKit's exact-matching extraction and VQA scores (``neo_jax/eval/matching.py``,
``scores.py``): hand-worked cases from the rules in vlmeval/utils/matching_util.py,
dataset/utils/yorn.py and dataset/utils/vqa_eval.py; with ``NEO_RELEASE_DIR``, the
release's own functions on the same and on generated answers."""

from __future__ import annotations

import ast
import copy
import math
import os
import re
import string
import typing

import numpy as np
import pytest

from neo_jax.eval import matching, scores
from testlib import release_eval

OPTS = {"A": "a red apple", "B": "a blue car", "C": "green grass", "D": "the sky"}
CHOICE_CASES = [
    ("B", "B"), ("(C)", "C"), ("The answer is D.", "D"), ("A. a red apple", "A"),
    ("B, not C", None),                       # two letters: no letter answer, text fails too
    ("A is my answer because it shows a red colour and shape", None),   # letter too early
    ("It is a blue car.", "B"),               # by option text
    ("green grass or the sky", None),         # two option texts
    ("I'm sorry, but without the image provided I cannot say", "Z"),
    ("Z", "Z"), ("no idea", None), ("", None)]


@pytest.mark.parametrize("answer,want", CHOICE_CASES)
def test_choice_extraction_by_hand(answer, want):
  assert matching.infer_choice(answer, OPTS) == want


@pytest.mark.parametrize("answer,want", [
    ("Yes", "Yes"), ("no.", "No"), ("Yes, it is.", "Yes"), ("Yes and no", "Unknown"),
    ("Nope", "Unknown"), ("NO!", "No")])
def test_yes_no_by_hand(answer, want):
  assert matching.yes_no(answer) == want


def test_vqa_normalisation_and_scores_by_hand():
  assert matching.normalize_vqa("Two dogs.") == "2 dogs"
  assert matching.normalize_vqa("The  cat\tdoesnt run") == "cat doesn't run"
  assert matching.normalize_vqa("1,000 (approx)") == "1000 approx"
  ten = str(["2"] * 3 + ["two"] * 2 + ["3"] * 5)          # VQA-v2's ten answers
  # 5 of the ten say "2" after normalisation: each left-out subset has 4 or 5 agreeing.
  assert matching.vqa_score("2", ten, "TextVQA_VAL") == pytest.approx(1.0)
  assert matching.vqa_score("3", ten, "TextVQA_VAL") == pytest.approx(1.0)
  one = str(["cat"] + ["dog"] * 9)
  # "cat": the one annotator left out -> 0 others agree; the 9 others -> 1 agrees (1/3).
  assert matching.vqa_score("cat", one, "TextVQA_VAL") == pytest.approx(9 / 3 / 10)
  assert matching.vqa_score("12.8", "12", "ChartQA_TEST") == 0.0        # 6.7 % off
  assert matching.vqa_score("12.4", "12.0", "ChartQA_TEST") == 1.0        # within 5 %
  assert matching.vqa_score("51%", "0.5", "ChartQA_TEST") == 1.0
  assert matching.vqa_score("Invoice 12", "invoice 13", "DocVQA_VAL") == pytest.approx(1 - 1 / 10)
  assert matching.vqa_score("abcdef", "uvwxyz", "DocVQA_VAL") == 0.0      # ANLS < 0.5
  assert matching.vqa_score(" Hello ", "hello", "OCRVQA_TEST") == 1.0
  # OCRBench: a reference inside the prediction; formulas compare without spaces.
  assert matching.vqa_score("It reads STOP here", "['stop', 'halt']", "OCRBench") == 1.0
  assert matching.vqa_score("x ^ 2", "['x^2']", "OCRBench",
                            category="Handwritten Mathematical Expression Recognition") == 1.0
  assert matching.vqa_score("X^2", "['x^2']", "OCRBench",
                            category="Handwritten Mathematical Expression Recognition") == 0.0
  # Other names: the normalised answers equal (one reference is enough, unlike VQA-v2).
  assert matching.vqa_score("Two.", "2", "MyOpenended") == 1.0


def test_row_scores_and_circular_summary():
  row = {"index": "1", "question": "q", "A": "x", "B": "y", "answer": "B", "category": "c1"}
  assert scores.score_row(row, "B", "MMBench_DEV_EN", "MCQ")["score"] == 1.0
  rot = dict(row, index="1000001", answer="A")       # the same question, options rotated
  other = dict(row, index="2", answer="A", category="c2")
  rows = [row, rot, other]
  scored = {"1": scores.score_row(row, "B", "MMBench_DEV_EN", "MCQ"),
            "1000001": scores.score_row(rot, "B", "MMBench_DEV_EN", "MCQ"),
            "2": scores.score_row(other, "A", "MMBench_DEV_EN", "MCQ")}
  s = scores.summarize("MMBench_DEV_EN", "MCQ", rows, scored)
  assert s["accuracy"] == pytest.approx(2 / 3)
  assert s["circular_accuracy"] == pytest.approx(1 / 2)      # question 1 fails its rotation
  assert s["per_category"] == {"c1": 0.5, "c2": 1.0}
  mmmu = {"index": "5", "question": "open?", "answer": "42"}       # MMMU_preproc
  assert scores.score_row(mmmu, "It is 42", "MMMU_DEV_VAL", "MCQ")["score"] == 1.0
  assert scores.score_row({"answer": "yes"}, "Yes", "AMBER", "Y/N")["score"] == 1.0
  assert scores.score_row({"answer": "yes"}, "Yes", "POPE", "Y/N")["score"] == 0.0


def _answers(seed: int, n: int) -> list[str]:
  """Generated answers mixing letters, option words, punctuation, yes / no, numbers."""
  rng = np.random.default_rng(seed)
  vocab = (list("ABCDZ") + ["a", "red", "apple", "blue", "car", "yes", "no", "Yes", "No",
                            "the", "two", "3", "1,000", "doesnt", "(B)", "C.", "is", "answer",
                            "sky", "grass", "green", "12.5%", "none", "-", "/", "!", "?"])
  return [" ".join(rng.choice(vocab, rng.integers(0, 9))) for _ in range(n)]


def test_extraction_equals_the_release_on_generated_answers():
  util = release_eval.functions("utils/matching_util.py",
                                ("can_infer", "can_infer_option", "can_infer_text"),
                                cp=copy, string=string, os=os)
  yorn = release_eval.functions("dataset/utils/yorn.py", ("YOrN_Extraction",))
  for a in _answers(0, 3000) + [c for c, _ in CHOICE_CASES]:
    want = util["can_infer"](a, dict(OPTS))
    assert matching.infer_choice(a, OPTS) == (want or None), a
    assert matching.yes_no(a) == yorn["YOrN_Extraction"](a), a


def test_vqa_scores_equal_the_release_on_generated_answers():
  vqa = release_eval.functions(
      "dataset/utils/vqa_eval.py",
      ("_process_digit_article", "process_answer", "process_line", "hit_calculate",
       "relaxed_correctness", "levenshtein_distance", "anls_compute"),
      np=np, Optional=typing.Optional, re=re, math=math)
  answers = _answers(1, 400)
  for dataset in ("TextVQA_VAL", "ChartQA_TEST", "OCRVQA_TEST", "GQA_TestDev_Balanced",
                  "DocVQA_VAL", "MyOpenended"):
    for k, pred in enumerate(answers):
      refs = answers[k + 1:k + 11] if dataset == "TextVQA_VAL" else answers[k + 1:k + 2]
      ref = str(refs) if len(refs) > 1 else (refs[0] if refs else "x")
      method = {"TextVQA_VAL": "vqa_score", "ChartQA_TEST": "relaxed_accuracy",
                "OCRVQA_TEST": "accuracy", "GQA_TestDev_Balanced": "accuracy",
                "DocVQA_VAL": "anls"}.get(dataset, "default")
      line = {"answer": ref, "prediction": pred}
      res = vqa["process_line"](line, method=method)
      want = vqa["hit_calculate"]([res], dataset)[0]
      assert matching.vqa_score(pred, ref, dataset) == pytest.approx(float(want)), (dataset, pred)
  for a in answers:
    assert matching.normalize_vqa(a) == vqa["process_answer"](a), a
  # Every word of VQA-v2's contraction table (read from the release's source).
  src = open(os.path.join(release_eval.root(), "VLMEvalKit", "vlmeval", "dataset", "utils",
                          "vqa_eval.py")).read()
  table = next(ast.literal_eval(n.value) for n in ast.walk(ast.parse(src))
               if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "contractions")
  assert len(table) > 100
  for word in table:
    for text in (word, f"a {word} b", word.upper()):
      assert matching.normalize_vqa(text) == vqa["process_answer"](text), text
