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
