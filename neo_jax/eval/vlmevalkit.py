"""VLMEvalKit's benchmark files: a TSV in, the release's prompts, a result file out.

A VLMEvalKit TSV (``<LMUData>/<dataset>.tsv``, e.g. ``MMBench_DEV_EN.tsv``) has one
question per row: ``index``, ``question``, an optional ``hint``, options in columns
``A``..``Z``, ``answer``, ``category``, and the image as base64 in ``image`` (or the
``index`` of another row holding it, or a list literal of several), or a file in
``image_path`` (several as a list literal). The reading follows
vlmeval/dataset/image_base.py: pandas' default missing-value strings ("", "NA", "None",
"nan", ...) are missing, a row without an image is dropped (``skip_noimg``; counted
here), an image is decoded and written as VLMEvalKit's ``dump_image`` writes it
(RGBA / P / LA made RGB, ``<index>.jpg`` for a single image: JPEG at Pillow's default
quality; ``<index>_<i>.png`` for several, or the ``image_path`` name) and read back, so
the model sees the pixels the authors' runs saw.

The dataset type comes from the file name as VLMEvalKit's ``DATASET_TYPE`` does (its
known names, "openended" -> VQA, else MCQ) for the prompt, and as its ``build_dataset``
does for scoring an unknown name (options A and B -> MCQ, else VQA); ``--dataset_type``
sets both. The result file ``<model>_<dataset>.xlsx`` (``.tsv`` without openpyxl) holds
the TSV's columns except ``image``, plus ``prediction``, as ``vlmeval/inference.py``
writes it, so VLMEvalKit's own ``run.py --mode eval`` scores it.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import os
import sys
from typing import Any

from PIL import Image

from neo_jax.eval import prompts

# pandas.read_csv's default missing-value strings (what VLMEvalKit's ``load`` sees as NaN).
NA_STRINGS = frozenset(["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                        "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a",
                        "nan", "null"])
TYPES = ("MCQ", "Y/N", "VQA")
# VLMEvalKit's dataset classes by name (ImageMCQDataset, MMMUDataset, ImageYORNDataset,
# ImageVQADataset, OCRBench, MathVista, ...): the benchmarks the NEO papers report and
# the common ones around them.
KNOWN = {
    **{n: "MCQ" for n in (
        "MMBench_DEV_EN", "MMBench_TEST_EN", "MMBench_DEV_CN", "MMBench_TEST_CN", "MMBench",
        "MMBench_CN", "MMBench_DEV_EN_V11", "MMBench_TEST_EN_V11", "MMBench_DEV_CN_V11",
        "MMBench_TEST_CN_V11", "MMBench_V11", "MMBench_CN_V11", "CCBench", "SEEDBench_IMG",
        "SEEDBench2", "SEEDBench2_Plus", "ScienceQA_VAL", "ScienceQA_TEST", "AI2D_TEST",
        "AI2D_TEST_NO_MASK", "MMStar", "RealWorldQA", "BLINK", "MMMU_DEV_VAL", "MMMU_TEST",
        "MUIRBench", "MMT-Bench_ALL", "MMT-Bench_VAL", "A-OKVQA", "MMVP", "CV-Bench-2D",
        "CV-Bench-3D", "HRBench4K", "HRBench8K")},
    **{n: "Y/N" for n in ("MME", "HallusionBench", "POPE", "AMBER", "VSR-zeroshot")},
    **{n: "VQA" for n in (
        "OCRVQA_TEST", "OCRVQA_TESTCORE", "TextVQA_VAL", "DocVQA_VAL", "DocVQA_TEST",
        "InfoVQA_VAL", "InfoVQA_TEST", "ChartQA_TEST", "GQA_TestDev_Balanced", "OCRBench",
        "MathVista_MINI", "MathVerse_MINI", "MathVision", "MathVision_MINI", "MMVet",
        "LLaVABench", "VizWiz", "DynaMath", "LogicVista", "WeMath")},
}
# Datasets VLMEvalKit scores circularly (a question counts once all its rotations are
# right; ``ImageMCQDataset.evaluate_heuristic``).
CIRCULAR = ("mmbench", "ccbench", "circular", "mmcr")


def dataset_types(name: str, columns: list[str], override: str | None = None) -> tuple[str, str]:
  """``(prompt type, scoring type)`` of a TSV named ``name`` (module docstring).

  Raises:
    ValueError: ``override`` is not one of ``TYPES``.
  """
  if override:
    if override not in TYPES:
      raise ValueError(f"--dataset_type {override!r} is not one of {', '.join(TYPES)}.")
    return override, override
  if name in KNOWN:
    return KNOWN[name], KNOWN[name]
  prompt_type = "VQA" if "openended" in name.lower() else "MCQ"
  return prompt_type, "MCQ" if "A" in columns and "B" in columns else "VQA"


def read_tsv(path: str) -> tuple[list[str], list[dict[str, Any]], list[str]]:
  """``(columns, rows, bad)``: rows as ``{column: str}`` without the missing values;
  ``bad`` describes rows with a wrong field count.

  Raises:
    ValueError: no header, or no ``question`` / ``index`` column.
  """
  csv.field_size_limit(sys.maxsize)
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.reader(f, delimiter="\t")
    columns = next(reader, None)
    if not columns:
      raise ValueError(f"{path} is empty.")
    missing = {"index", "question"} - set(columns)
    if missing:
      raise ValueError(f"{path} has no {', '.join(sorted(missing))} column (VLMEvalKit TSV).")
    rows, bad = [], []
    for n, fields in enumerate(reader, 2):
      if len(fields) != len(columns):
        bad.append(f"line {n}: {len(fields)} fields for {len(columns)} columns")
        continue
      rows.append({c: v for c, v in zip(columns, fields) if v not in NA_STRINGS})
  return columns, rows, bad


def _listed(value: str) -> list[str]:
  """VLMEvalKit's ``toliststr``: a ``[...]`` literal is a list, else one string."""
  import ast  # pylint: disable=import-outside-toplevel
  if value.startswith("[") and value.endswith("]"):
    return [str(x) for x in ast.literal_eval(value)]
  return [value]


def resolve_image_refs(rows: list[dict[str, Any]]) -> None:
  """A short ``image`` (<= 64 characters) names the row whose image it shares (in place).

  Raises:
    KeyError: the named row does not exist or holds no image itself.
  """
  by_index = {r["index"]: r.get("image") for r in rows if "index" in r}
  for r in rows:
    img = r.get("image")
    if img is not None and len(img) <= 64:
      target = by_index.get(img)
      if target is None or len(target) <= 64:
        raise KeyError(f"row {r.get('index')}: image refers to row {img!r}, which holds none")
      r["image"] = target


def dumped_image(b64: str, file_name: str) -> bytes:
  """The bytes VLMEvalKit's ``decode_base64_to_image_file`` writes for ``file_name``:
  the decoded image, made RGB if RGBA / P / LA, saved in the format of the name's
  extension (Pillow's defaults).

  Raises:
    ValueError: not base64 or not an image.
  """
  try:
    img = Image.open(io.BytesIO(base64.b64decode(b64, validate=False)))
    img.load()
  except (binascii.Error, OSError, Image.DecompressionBombError, ValueError) as e:
    raise ValueError(f"image is not a base64 image ({type(e).__name__}: {e})") from e
  if img.mode in ("RGBA", "P", "LA"):
    img = img.convert("RGB")
  out = io.BytesIO()
  ext = os.path.splitext(file_name)[1].lower().lstrip(".")
  img.save(out, format={"jpg": "JPEG", "jpeg": "JPEG"}.get(ext, ext.upper() or "PNG"))
  return out.getvalue()


def image_list(row: dict[str, Any]) -> list[str]:
  """The row's base64 images (``image``), else its ``image_path`` entries.

  Raises:
    ValueError / SyntaxError: a malformed list literal.
  """
  return _listed(row["image"]) if "image" in row else _listed(row["image_path"])


def row_images(row: dict[str, Any], root: str) -> list[Any]:
  """The images of a row: encoded bytes (from ``image``) or paths (``image_path`` alone,
  relative to ``root``), in order.

  Raises:
    ValueError: an undecodable image, or image / image_path lists of different lengths.
  """
  if "image" in row:
    imgs = _listed(row["image"])
    if len(imgs) > 1:
      names = (_listed(row["image_path"]) if "image_path" in row
               else [f"{row['index']}_{i}.png" for i in range(len(imgs))])
      if len(names) != len(imgs):
        raise ValueError(f"{len(imgs)} images for {len(names)} image_path names")
    else:
      names = [_listed(row["image_path"])[0] if "image_path" in row else f"{row['index']}.jpg"]
    return [dumped_image(b, n) for b, n in zip(imgs, names)]
  return [p if os.path.isabs(p) else os.path.join(root, p) for p in _listed(row["image_path"])]


def record(row: dict[str, Any], dataset: str, prompt_type: str, style: str, images: list[Any],
           system: str) -> dict[str, Any]:
  """A release-format record of a row: the user turn is the release's prompt with its
  images placed; the reference answer is the last turn.

  Raises:
    prompts.PromptError: the row lacks what its prompt needs.
  """
  text = prompts.question_prompt(row, dataset, prompt_type, style)
  user = prompts.place_images(text, len(images), dataset, style)
  turns = ([{"from": "system", "value": system}] if system else []) + [
      {"from": "human", "value": user}, {"from": "gpt", "value": str(row.get("answer", ""))}]
  return {"_id": f"{dataset}/{row['index']}", "image": images, "conversations": turns}


def write_result(path_stem: str, columns: list[str], rows: list[dict[str, Any]],
                 predictions: dict[str, str], fmt: str = "auto") -> str:
  """Writes VLMEvalKit's result file: every row with a prediction, the TSV's columns but
  ``image``, plus ``prediction``; ``.xlsx`` (openpyxl) or ``.tsv`` (all fields quoted,
  as VLMEvalKit's ``dump``). ``fmt``: "xlsx", "tsv" or "auto". Returns the path."""
  if fmt == "auto":
    try:
      import openpyxl  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
      fmt = "xlsx"
    except ImportError:
      fmt = "tsv"
  cols = [c for c in columns if c != "image"] + ["prediction"]
  table = [[r.get(c) if c != "prediction" else predictions[r["index"]] for c in cols]
           for r in rows if r["index"] in predictions]
  path = f"{path_stem}.{fmt}"
  if fmt == "xlsx":
    import openpyxl  # pylint: disable=import-outside-toplevel
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(cols)
    for t in table:
      ws.append([_cell(v) for v in t])
    wb.save(path)
  else:
    with open(path, "w", newline="", encoding="utf-8") as f:
      w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL)
      w.writerow(cols)
      w.writerows(table)
  return path


def _cell(v: Any) -> Any:
  """An xlsx cell: integers as numbers (VLMEvalKit compares ``index`` as int)."""
  if isinstance(v, str) and v.lstrip("-").isdigit() and len(v) < 16:
    return int(v)
  return v
