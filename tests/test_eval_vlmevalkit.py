"""VLMEvalKit TSVs through ``neo_jax.evaluate`` (MCQ, Y/N, VQA; base64 and path images;
bad rows as counted skips), driven as a user would on the small demo-shaped model of
``test_infer_cli.py``: the prompts in ``predictions.jsonl`` are the release's (hand-written
here), the result file has VLMEvalKit's layout, the summary VLMEvalKit's scores."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from neo_jax.eval import presets, tsv_records
from neo_jax.eval import vlmevalkit as vk
from test_infer_cli import small  # noqa: F401  pylint: disable=unused-import

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."


def _png(seed: int, size=(40, 56), mode="RGB") -> bytes:
  arr = np.random.default_rng(seed).integers(0, 256, (*size, 4 if mode == "RGBA" else 3),
                                             dtype=np.uint8)
  out = io.BytesIO()
  Image.fromarray(arr, mode).save(out, format="PNG")
  return out.getvalue()


def _b64(data: bytes) -> str:
  return base64.b64encode(data).decode()


def _write(path, columns, rows, extra_lines=()):
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f, delimiter="\t")
    w.writerow(columns)
    for r in rows:
      w.writerow([r.get(c, "") for c in columns])
  with open(path, "a", encoding="utf-8") as f:
    for line in extra_lines:
      f.write(line + "\n")


@pytest.fixture(scope="module")
def tsvs(tmp_path_factory):
  d = tmp_path_factory.mktemp("lmudata")
  img = [_b64(_png(i)) for i in range(4)]
  mcq_cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
  _write(d / "MMBench_DEV_EN.tsv", mcq_cols, [
      {"index": 1, "question": "What colour is it?", "hint": "Look.", "A": "red", "B": "blue",
       "C": "green", "D": "None", "answer": "A", "category": "colour", "image": img[0]},
      {"index": 1000001, "question": "What colour is it?", "hint": "Look.", "A": "blue",
       "B": "green", "C": "red", "answer": "C", "category": "colour", "image": "1"},
      {"index": 2, "question": "How many?", "A": "one", "B": "two", "answer": "B",
       "category": "count", "image": str([img[1], _b64(_png(9, mode="RGBA"))])},
      {"index": 3, "question": "No image here", "A": "x", "B": "y", "answer": "A"},
      {"index": 4, "question": "Broken", "A": "x", "B": "y", "answer": "A",
       "image": "not-an-image" * 10}],
      extra_lines=["5\tshort row"])
  for i in range(2):
    (d / f"mme{i}.png").write_bytes(_png(10 + i))
  _write(d / "MME.tsv", ["index", "question", "answer", "category", "image_path"], [
      {"index": 0, "question": "Is it red?", "answer": "Yes", "category": "color",
       "image_path": "mme0.png"},
      {"index": 1, "question": "Is it blue?", "answer": "No", "category": "color",
       "image_path": "mme1.png"},
      {"index": 2, "question": "Missing?", "answer": "No", "category": "color",
       "image_path": "nowhere.png"}])
  _write(d / "TextVQA_VAL.tsv", ["index", "question", "answer", "image"], [
      {"index": 7, "question": "What does it say?", "answer": str(["stop"] * 10), "image": img[2]},
      {"index": 8, "question": "Which word?", "answer": str(["go"] * 6 + ["went"] * 4),
       "image": img[3]}])
  return d


def _evaluate(ckpt, data, out, *extra):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "neo_jax.evaluate", f"--ckpt={ckpt}",
                      f"--data={data}", f"--out={out}", "--max_new_tokens=4",
                      "--result_format=tsv", "--model_name=tiny", *extra],
                     env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stderr


def test_tsv_round_trip(small, tsvs, tmp_path):  # noqa: F811
  _, _, _, ckpt = small
  out = tmp_path / "out"
  data = ",".join(str(tsvs / f"{n}.tsv") for n in ("MMBench_DEV_EN", "MME", "TextVQA_VAL"))
  log = _evaluate(ckpt, data, out, "--preset=neo", "--max_pixels=4096", "--min_pixels=1024")
  assert "preset neo" in log and "the flags override max_pixels=4096, min_pixels=1024" in log
  preds = {p["id"]: p for p in map(json.loads, open(out / "predictions.jsonl"))}
  assert sorted(preds) == sorted(["MME/0", "MME/1", "MMBench_DEV_EN/1", "MMBench_DEV_EN/1000001",
                                  "MMBench_DEV_EN/2", "TextVQA_VAL/7", "TextVQA_VAL/8"])
  # The release's prompts: "None" is a missing value to pandas, so option D is dropped.
  assert preds["MMBench_DEV_EN/1"]["prompt"] == (
      "<image>\nLook.\nWhat colour is it?\nA. red\nB. blue\nC. green\n" + MCQ_SUFFIX)
  assert preds["MMBench_DEV_EN/2"]["prompt"] == (
      "Image-1: <image>\nImage-2: <image>\nHow many?\nA. one\nB. two\n" + MCQ_SUFFIX)
  assert preds["MME/0"]["prompt"] == (
      "<image>\nIs it red? Answer the question using a single word or phrase.")
  assert preds["TextVQA_VAL/7"]["prompt"] == (
      "<image>\nWhat does it say?\nAnswer the question using a single word or phrase.")
  assert "system" not in preds["MME/0"]
  summary = json.load(open(out / "summary.json"))
  # Skips: the short line and the undecodable image (MMBench), the row without an
  # image, the missing file (MME).
  assert summary["skipped"] == {"bad_row": 1, "corrupt_file": 1, "no_image": 1,
                                "missing_file": 1}, summary["skipped"]
  bench = summary["benchmarks"]
  assert bench["MMBench_DEV_EN"]["type"] == "MCQ" and bench["MMBench_DEV_EN"]["records"] == 3
  assert "circular_accuracy" in bench["MMBench_DEV_EN"]
  assert bench["MME"]["type"] == "Y/N" and bench["TextVQA_VAL"]["type"] == "VQA"
  for name, b in bench.items():
    mine = [p for p in preds.values() if p["task"] == name]
    assert b["accuracy"] == pytest.approx(np.mean([p["score"] for p in mine]))
    with open(b["result_file"], newline="", encoding="utf-8") as f:
      table = list(csv.DictReader(f, delimiter="\t"))
    assert b["result_file"] == str(out / f"tiny_{name}.tsv")
    assert "image" not in table[0] and list(table[0])[-1] == "prediction"
    assert {r["index"]: r["prediction"] for r in table} == {
        p["index"]: p["prediction"] for p in mine}


def test_dataset_type_from_name_and_override(tsvs, tmp_path):
  assert vk.dataset_types("MMBench_DEV_EN", []) == ("MCQ", "MCQ")
  assert vk.dataset_types("HallusionBench", []) == ("Y/N", "Y/N")
  assert vk.dataset_types("MyBench", ["A", "B"]) == ("MCQ", "MCQ")
  assert vk.dataset_types("MyBench", ["question"]) == ("MCQ", "VQA")
  assert vk.dataset_types("MyOpenended", ["question"]) == ("VQA", "VQA")
  custom = tmp_path / "MyYesNo.tsv"
  custom.write_text((tsvs / "MME.tsv").read_text())
  items, table = tsv_records.load(str(custom), str(tsvs), 2, None, None)
  assert (table.prompt_type, table.score_type) == ("MCQ", "VQA")     # VLMEvalKit's guesses
  assert items[0][1]["conversations"][0]["value"] == (
      "<image>\nIs it red?\nAnswer the question directly.")
  items, table = tsv_records.load(str(custom), str(tsvs), 2, "Y/N", presets.get("neo_ov"))
  assert (table.prompt_type, table.score_type) == ("Y/N", "Y/N") and len(items) == 2
  turns = items[0][1]["conversations"]
  assert turns[0] == {"from": "system", "value": "Reason step by step."}
  assert turns[1]["value"] == "<image>\nIs it red?"      # a Y/N name VLMEvalKit does not know
  with pytest.raises(ValueError, match="dataset_type"):
    tsv_records.load(str(custom), str(tsvs), 2, "Yes/No", None)
