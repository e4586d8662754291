"""``neo_jax.evaluate --data X.tsv``: a VLMEvalKit TSV as records for the evaluation loop.

Each row becomes a release-format record (``vlmevalkit.record``: the release's prompt,
its images placed) with a ``"_bench"`` entry the loop scores it by
(``scores.score_row``); a row that cannot be used becomes a record with ``"_error":
(reason, detail)``, counted as a skip by the loop (reasons ``bad_row``, ``no_image``,
``corrupt_file``, ``missing_file``). With a preset, MMMU's first image is doubled
(bilinear) as the release's ``generate_inner`` does, after the RGBA rule.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any

from neo_jax.eval import presets, prompts
from neo_jax.eval import vlmevalkit as vk


@dataclasses.dataclass
class Table:
  """One TSV: its name, columns, usable rows, prompt / scoring types, and the style and
  system message its prompts were built with."""
  name: str
  columns: list[str]
  rows: list[dict[str, Any]]
  prompt_type: str
  score_type: str
  style: str
  system: str


def _error(name: str, row_id: str, reason: str, detail: str) -> dict:
  return {"_id": f"{name}/{row_id}", "_error": (reason, detail)}


def _upscaled_first(images: list[Any], composite: bool) -> list[Any]:
  """The first image doubled in both sides (bilinear), as ``load_image_native(upscale=True)``."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from neo_jax.data import images as images_lib  # pylint: disable=import-outside-toplevel
  from neo_jax.data.errors import BadSample  # pylint: disable=import-outside-toplevel
  first = images[0]
  try:
    img = Image.open(io.BytesIO(first) if isinstance(first, bytes) else first)
    img.load()
  except FileNotFoundError as e:
    raise BadSample("missing_file", str(first)) from e
  except (OSError, ValueError) as e:
    raise BadSample("corrupt_file", f"{type(e).__name__}: {e}") from e
  img = images_lib.release_eval_rgb(img) if composite else images_lib.to_rgb(img)
  return [img.resize((img.width * 2, img.height * 2), Image.Resampling.BILINEAR)] + images[1:]


def materialize(rec: dict) -> dict:
  """The record with its images decoded (done per batch, not for the whole file).

  Raises:
    BadSample: an image that cannot be decoded or found.
  """
  from neo_jax.data.errors import BadSample  # pylint: disable=import-outside-toplevel
  lazy = rec.get("_images")
  if lazy is None:
    return rec
  root, upscale, composite = lazy
  row = rec["_bench"]["row"]
  try:
    images = vk.row_images(row, root)
  except (ValueError, SyntaxError) as e:
    raise BadSample("corrupt_file", str(e)) from e
  if upscale and images:
    images = _upscaled_first(images, composite)
  out = {k: v for k, v in rec.items() if k != "_images"}
  out["image"] = images
  return out


def load(path: str, data_root: str | None, limit: int, dataset_type: str | None,
         preset: presets.Preset | None) -> tuple[list[tuple[str, dict, dict]], Table]:
  """``([(name, record, {})], Table)`` of a VLMEvalKit TSV (module docstring); each
  record's images are decoded by ``materialize``.

  Args:
    path: the TSV; its file name without ``.tsv`` is the dataset name.
    data_root: root of relative ``image_path`` entries (default: the TSV's folder).
    limit: rows at most (0 = all); dataset_type: ``--dataset_type`` (None: from the name).
    preset: the ``--preset`` (prompt style, system message, MMMU upscale).
  Raises:
    ValueError: not a VLMEvalKit TSV (no header / ``index`` / ``question``), a bad
      ``dataset_type``, an ``image`` that names a row without one.
  """
  name = os.path.splitext(os.path.basename(path))[0]
  columns, rows, bad = vk.read_tsv(path)
  prompt_type, score_type = vk.dataset_types(name, columns, dataset_type)
  style = preset.style if preset else "neo"
  system = preset.system if preset else ""
  root = data_root or os.path.dirname(os.path.abspath(path))
  upscale = presets.upscale_first_image(preset, name)
  composite = bool(preset and preset.processing.get("composite_rgba", False))
  items = [(name, _error(name, f"line{i}", "bad_row", b), {}) for i, b in enumerate(bad)]
  try:
    vk.resolve_image_refs(rows)
  except KeyError as e:
    raise ValueError(f"{path}: {e.args[0]}") from e
  good = []
  for row in rows[:limit] if limit else rows:
    rid = row.get("index", "?")
    if "image" not in row and "image_path" not in row:
      items.append((name, _error(name, rid, "no_image", "no image and no image_path"), {}))
      continue
    try:
      n = len(vk.image_list(row))
      rec = vk.record(row, name, prompt_type, style, [None] * n, system)
    except (ValueError, SyntaxError, prompts.PromptError) as e:
      items.append((name, _error(name, rid, "bad_row", f"{type(e).__name__}: {e}"), {}))
      continue
    del rec["image"]
    rec.update(_images=(root, upscale, composite), task=name,
               _bench={"dataset": name, "index": rid, "score_type": score_type, "row": row,
                       "num_images": n})
    good.append(row)
    items.append((name, rec, {}))
  return items, Table(name, columns, good, prompt_type, score_type, style, system)
