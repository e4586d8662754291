"""Scores of a VLMEvalKit benchmark in its ``exact_matching`` mode (``matching.py``).

Per row (``score_row``): MCQ, the extracted letter against ``answer`` (MMMU: an open
question becomes option A = its answer, B = "Other Answers", as ``MMMU_preproc``);
Y/N, the extracted "Yes" / "No" against ``answer`` (AMBER ignores case); VQA, the
dataset's VQA score (``matching.vqa_method``: VLMEvalKit's for TextVQA, ChartQA, OCRVQA,
GQA, DocVQA, InfoVQA and OCRBench, else the normalised exact match, ours). Per dataset (``summarize``): the mean and the mean per
``category`` / ``l2-category``; for MMBench-like names also the circular accuracy
(VLMEvalKit's headline number there): a question (``index`` mod 1e6) counts once every
rotation of it was extracted and right (integer ``index`` values). Benchmark-specific ratings (MME's score,
HallusionBench's qAcc / fAcc, POPE's F1) are left to VLMEvalKit's scripts, which read
the result file (``vlmevalkit.write_result``).
"""

from __future__ import annotations

import collections
import string
from typing import Any

from neo_jax.eval import matching, prompts
from neo_jax.eval import vlmevalkit as vk


def mcq_choices(row: dict[str, Any], dataset: str) -> tuple[dict[str, str], str]:
  """``(options, right letter)`` of an MCQ row as VLMEvalKit scores it."""
  choices = prompts.options(row)
  answer = str(row.get("answer", ""))
  if "MMMU" in dataset:
    if "A" not in choices:
      choices = dict(choices, A=answer, B="Other Answers")
    answer = answer if len(answer) == 1 and answer in string.ascii_uppercase else "A"
  return choices, answer


def score_row(row: dict[str, Any], prediction: str, dataset: str, score_type: str
              ) -> dict[str, Any]:
  """``{"score": float in [0, 1], "parsed": bool, "extracted": str}`` of one row."""
  if score_type == "MCQ":
    choices, right = mcq_choices(row, dataset)
    got = matching.infer_choice(prediction, choices)
    return {"score": float(got == right), "parsed": got is not None, "extracted": got or ""}
  if score_type == "Y/N":
    got = matching.yes_no(prediction)
    want = str(row.get("answer", ""))
    same = got.lower() == want.lower() if "AMBER" in dataset else got == want
    return {"score": float(same), "parsed": got != "Unknown", "extracted": got}
  return {"score": matching.vqa_score(prediction, row.get("answer", ""), dataset,
                                     category=str(row.get("category", ""))),
          "parsed": True, "extracted": ""}


def summarize(dataset: str, score_type: str, rows: list[dict[str, Any]],
              scored: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """The dataset's summary from ``scored`` (``{index: score_row(...)}``) over ``rows``."""
  have = [r for r in rows if r["index"] in scored]
  out: dict[str, Any] = {"type": score_type, "records": len(have),
                         "unparsed": sum(not scored[r["index"]]["parsed"] for r in have)}
  if score_type == "VQA":
    out["vqa_method"] = matching.vqa_method(dataset)
  if not have:
    return out
  out["accuracy"] = sum(scored[r["index"]]["score"] for r in have) / len(have)
  for group in ("category", "l2-category"):
    by = collections.defaultdict(list)
    for r in have:
      if group in r:
        by[r[group]].append(scored[r["index"]]["score"])
    if by:
      out[f"per_{group}"] = {k: sum(v) / len(v) for k, v in sorted(by.items())}
  if (score_type == "MCQ" and any(c in dataset.lower() for c in vk.CIRCULAR)
      and all(r["index"].isdigit() for r in have)):
    groups = collections.defaultdict(list)     # rotations by their question's index
    for r in have:
      groups[str(int(r["index"]) % 1_000_000)].append(scored[r["index"]])
    hits = [all(s["parsed"] and s["score"] == 1 for s in groups[i]) for i in groups
            if i in scored]                    # a question whose own row was answered
    out["circular_accuracy"] = sum(hits) / len(hits)
    out["circular_questions"] = len(hits)
  return out
