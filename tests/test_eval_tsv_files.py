"""VLMEvalKit's files without a model (``neo_jax/eval/vlmevalkit.py``): images read back
as VLMEvalKit's ``dump_image`` writes them, and the result file as xlsx (openpyxl)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from neo_jax.eval import vlmevalkit as vk


def _png(seed: int, size=(40, 56), mode="RGB") -> bytes:
  arr = np.random.default_rng(seed).integers(0, 256, (*size, 4 if mode == "RGBA" else 3),
                                             dtype=np.uint8)
  out = io.BytesIO()
  Image.fromarray(arr, mode).save(out, format="PNG")
  return out.getvalue()


def _b64(data: bytes) -> str:
  return base64.b64encode(data).decode()


def test_images_are_read_as_vlmevalkit_dumps_them():
  rgba = _png(3, mode="RGBA")
  got = Image.open(io.BytesIO(vk.dumped_image(_b64(rgba), "12.jpg")))
  assert got.format == "JPEG" and got.mode == "RGB"
  want = io.BytesIO()
  Image.open(io.BytesIO(rgba)).convert("RGB").save(want, format="JPEG")
  np.testing.assert_array_equal(np.asarray(got), np.asarray(Image.open(want)))
  png = Image.open(io.BytesIO(vk.dumped_image(_b64(_png(4)), "12_0.png")))
  np.testing.assert_array_equal(np.asarray(png), np.asarray(Image.open(io.BytesIO(_png(4)))))
  with pytest.raises(ValueError, match="base64 image"):
    vk.dumped_image("not an image", "x.jpg")


def test_result_file_as_xlsx(tmp_path):
  openpyxl = pytest.importorskip("openpyxl")
  rows = [{"index": "1", "question": "q", "A": "a", "image": "..."}, {"index": "2", "question": "r"}]
  path = vk.write_result(str(tmp_path / "m_MMStar"), ["index", "question", "A", "image"], rows,
                         {"1": "A", "2": "B."}, "xlsx")
  ws = openpyxl.load_workbook(path).active
  assert [[c.value for c in r] for r in ws.iter_rows()] == [
      ["index", "question", "A", "prediction"], [1, "q", "a", "A"], [2, "r", None, "B."]]


MCQ_PREDS = ["B", "The answer is C.", "a blue car", "(A)", "B, not C", "A because it is", "Z",
             "D", "C", "B"]


def _mcq_rows():
  rows = []
  for i in range(8):
    rows.append({"index": str(i), "question": f"q{i}", "A": "a red apple", "B": "a blue car",
                 "C": "green grass", "D": "the sky", "answer": "ABCD"[i % 4],
                 "category": f"c{i % 3}", "image": _b64(_png(i, (8, 8)))})
  # Two rotations of questions 0 and 1 (MMBench's circular copies).
  rows.append(dict(rows[0], index="1000000", answer="C"))
  rows.append(dict(rows[1], index="1000001", answer="B"))
  return rows


def _write_tsv(path, cols, rows):
  import csv  # pylint: disable=import-outside-toplevel
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f, delimiter="\t")
    w.writerow(cols)
    for r in rows:
      w.writerow([r.get(c, "") for c in cols])


def test_vlmevalkit_scores_our_result_files_as_we_do(tmp_path, monkeypatch):
  """VLMEvalKit's own ``evaluate`` (exact matching) on result files we write: the same
  accuracy (MCQ vanilla and MMBench-circular, Y/N, TextVQA's VQA score) as ours."""
  from neo_jax.eval import scores  # pylint: disable=import-outside-toplevel
  from testlib import release_eval  # pylint: disable=import-outside-toplevel
  ds = release_eval.vlmeval_dataset_modules()
  monkeypatch.setenv("LMUData", str(tmp_path))
  monkeypatch.chdir(tmp_path)
  cols = ["index", "question", "A", "B", "C", "D", "answer", "category", "image"]
  rows = _mcq_rows()
  preds = dict(zip([r["index"] for r in rows], MCQ_PREDS))
  for name in ("MyMCQ", "MyMMBench"):
    _write_tsv(tmp_path / f"{name}.tsv", cols, rows)
    path = vk.write_result(str(tmp_path / f"m_{name}"), cols, rows, preds, "xlsx")
    theirs = ds["image_mcq"].CustomMCQDataset(dataset=name).evaluate(path, model="exact_matching")
    ours = scores.summarize(name, "MCQ", rows,
                            {i: scores.score_row(r, preds[i], name, "MCQ")
                             for i, r in ((r["index"], r) for r in rows)})
    key = "circular_accuracy" if name == "MyMMBench" else "accuracy"
    assert float(theirs["Overall"][0]) == pytest.approx(ours[key]), (name, theirs, ours)
  yn = [{"index": str(i), "question": "Is it?", "answer": a, "category": "x"}
        for i, a in enumerate(["Yes", "No", "Yes", "No", "Yes"])]
  yn_preds = {"0": "Yes.", "1": "no", "2": "Yes and no", "3": "Yes", "4": "yes, it is"}
  path = vk.write_result(str(tmp_path / "m_MyYN"), ["index", "question", "answer", "category"],
                         yn, yn_preds, "xlsx")
  obj = ds["image_yorn"].ImageYORNDataset.__new__(ds["image_yorn"].ImageYORNDataset)
  obj.dataset_name = "MyYN"
  theirs = obj.evaluate(path, model="exact_matching")
  ours = scores.summarize("MyYN", "Y/N", yn, {r["index"]: scores.score_row(
      r, yn_preds[r["index"]], "MyYN", "Y/N") for r in yn})
  assert float(theirs["Overall"][0]) == pytest.approx(100 * ours["accuracy"])
  vq = [{"index": "0", "question": "q", "answer": str(["stop"] * 7 + ["halt"] * 3)},
        {"index": "1", "question": "q", "answer": str(["two"] * 10)},
        {"index": "2", "question": "q", "answer": str(["a sign"] * 2 + ["sign"] * 8)}]
  vq_preds = {"0": "Halt.", "1": "2", "2": "The sign"}
  path = vk.write_result(str(tmp_path / "m_TextVQA_VAL"), ["index", "question", "answer"], vq,
                         vq_preds, "xlsx")
  obj = ds["image_vqa"].ImageVQADataset.__new__(ds["image_vqa"].ImageVQADataset)
  obj.dataset_name = "TextVQA_VAL"
  theirs = obj.evaluate(path)
  ours = scores.summarize("TextVQA_VAL", "VQA", vq, {r["index"]: scores.score_row(
      r, vq_preds[r["index"]], "TextVQA_VAL", "VQA") for r in vq})
  assert float(theirs["Overall"][0]) == pytest.approx(100 * ours["accuracy"])
  assert 0 < ours["accuracy"] < 1
  hme = "Handwritten Mathematical Expression Recognition"
  ocr = [{"index": "0", "question": "q", "answer": str(["Stop"]), "category": "Doc-oriented VQA"},
         {"index": "1", "question": "q", "answer": str(["x^2"]), "category": hme},
         {"index": "2", "question": "q", "answer": str(["go", "went"]),
          "category": "Scene Text-centric VQA"}]
  ocr_preds = {"0": "it says STOP", "1": "X ^ 2", "2": "he went home"}
  path = vk.write_result(str(tmp_path / "m_OCRBench"), ["index", "question", "answer",
                                                        "category"], ocr, ocr_preds, "xlsx")
  theirs = ds["image_vqa"].OCRBench.evaluate(path)
  ours = scores.summarize("OCRBench", "VQA", ocr, {r["index"]: scores.score_row(
      r, ocr_preds[r["index"]], "OCRBench", "VQA") for r in ocr})
  assert theirs["Final Score"] == 2 == round(ours["accuracy"] * len(ocr))
