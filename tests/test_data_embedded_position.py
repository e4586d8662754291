"""The position tasks of the Table 3 ablation (``data/embedded_position.py``).

* Deterministic: the same seed writes the same records and the same pixels.
* Held-out grid sizes are disjoint from the trained ones (read from the PNG files).
* Every answer equals one computed independently from the pixels: the marks are
  found as connected bright regions (``scipy.ndimage.label``), their cell is the
  region's centre // 32 and their colour the set of channels above 128.
* Through the pipeline: a grid image keeps its native size (one visual token per
  cell), and the ``embedded_v1`` tasks are unchanged by the registration.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from neo_jax.core import tokens
from neo_jax.data import embedded, embedded_position as ep, pipeline

N = 60   # records per (task, split) in these tests
_CHANNEL_NAMES = {(True, False, False): "red", (False, True, False): "green",
                  (False, False, True): "blue", (True, True, False): "yellow",
                  (True, True, True): "white"}


def _generate(root, task, split, seed=0, n=N):
  return ep.generate(task, split, n, np.random.default_rng(seed), str(root), f"{task}/{split}")


def _marks(path) -> dict[tuple[int, int], str]:
  """``{(row, col) 0-based: colour}`` read from the pixels alone."""
  img = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
  bright = img.max(axis=-1) > 100
  labels, n = ndimage.label(bright)
  out = {}
  for k in range(1, n + 1):
    ys, xs = np.nonzero(labels == k)
    cell = (int(ys.mean()) // 32, int(xs.mean()) // 32)
    colour = _CHANNEL_NAMES[tuple(bool(v > 128) for v in img[ys, xs].mean(axis=0))]
    assert cell not in out, f"two marks in cell {cell} of {path}"
    out[cell] = colour
  return out


def _expected(task, question, marks) -> str:
  if task == "grid_where":
    (r, c), = marks
    return f"{r + 1},{c + 1}"
  if task == "grid_relation":
    red = next(k for k, v in marks.items() if v == "red")
    blue = next(k for k, v in marks.items() if v == "blue")
    if "left or right" in question:
      return "left" if red[1] < blue[1] else "right"
    assert "above or below" in question
    return "above" if red[0] < blue[0] else "below"
  if task == "grid_count":
    row = int(re.search(r"row (\d+)\?", question).group(1)) - 1
    return str(sum(1 for (r, _) in marks if r == row))
  assert task == "grid_read"
  return " ".join(marks[k] for k in sorted(marks))


def test_generators_are_deterministic(tmp_path):
  for task in ep.TASKS:
    a = _generate(tmp_path / "a", task, "heldout", seed=3, n=12)
    b = _generate(tmp_path / "b", task, "heldout", seed=3, n=12)
    assert a == b
    for ra, rb in zip(a, b):
      pa = np.asarray(Image.open(tmp_path / "a" / ra["image"]))
      pb = np.asarray(Image.open(tmp_path / "b" / rb["image"]))
      assert np.array_equal(pa, pb)
    c = _generate(tmp_path / "c", task, "heldout", seed=4, n=12)
    assert c != a


def test_heldout_sizes_are_never_trained_on(tmp_path):
  assert not set(ep.TRAIN_SHAPES) & set(ep.HELDOUT_SHAPES)
  assert max(max(s) for s in ep.TRAIN_SHAPES) == 6
  assert all(max(s) in (7, 8) for s in ep.HELDOUT_SHAPES)
  seen = {}
  for split in ep.SPLITS:
    seen[split] = set()
    for task in ep.TASKS:
      for r in _generate(tmp_path, task, split):
        w, h = Image.open(tmp_path / r["image"]).size
        assert w % 32 == 0 and h % 32 == 0
        seen[split].add((h // 32, w // 32))
  assert seen["train"] <= set(ep.TRAIN_SHAPES) and seen["heldout"] <= set(ep.HELDOUT_SHAPES)
  assert not seen["train"] & seen["heldout"]
  # Varied widths and aspect ratios in both splits (1D row length not fixed).
  for split in ep.SPLITS:
    assert len({w for _, w in seen[split]}) >= 3
    assert len({h / w for h, w in seen[split]}) >= 6


@pytest.mark.parametrize("task", ep.TASKS)
def test_answers_match_the_pixels(tmp_path, task):
  answers = set()
  for split in ep.SPLITS:
    for r in _generate(tmp_path, task, split):
      marks = _marks(tmp_path / r["image"])
      assert all(rc < 6 and cc < 6 for rc, cc in marks), "a mark outside rows/columns 1..6"
      question, answer = (t["value"] for t in r["conversations"])
      assert question.startswith("<image>\n")
      assert answer == _expected(task, question, marks), (r["image"], question)
      answers.add(answer)
  assert len(answers) >= 4 if task != "grid_relation" else answers == {"left", "right",
                                                                         "above", "below"}


def test_pipeline_keeps_native_size_and_v1_tasks(tmp_path, monkeypatch):
  monkeypatch.setattr(ep, "SIZES", {"train": 8, "heldout": 8})
  assert embedded.TASKS == ("text", "digit", "aspect", "spatial", "multi_image", "video")
  assert embedded.ALL_TASKS == embedded.TASKS + ep.TASKS
  cfg = pipeline.default_data_config()
  cfg.cache_dir = str(tmp_path)
  for name in list(cfg.sources):
    del cfg.sources[name]
  for task in ep.TASKS:
    cfg.sources[task] = {"kind": "embedded", "task": task, "weight": 1.0, "path": "",
                         "data_root": "", "options": dict(embedded.TASK_OPTIONS[task])}
  examples = pipeline.make_eval_examples(cfg, task="grid_where")
  recs = embedded.load_records("grid_where", "heldout", str(tmp_path))
  assert len(examples) == len(recs) == 8
  assert os.path.isdir(tmp_path / f"embedded_position_{ep.VERSION}")
  assert not os.path.exists(tmp_path / f"embedded_{embedded.VERSION}")  # v1 not rebuilt
  for ex, rec in zip(examples, recs):
    w, h = Image.open(os.path.join(rec["data_path"], rec["image"])).size
    grid = ex["token_hw"][ex["input_ids"] == tokens.IMG_CONTEXT_TOKEN_ID]
    assert grid.max(axis=0).tolist() == [h // 32 - 1, w // 32 - 1]
    assert len(grid) == (h // 32) * (w // 32) == len(ex["pixel_values"])
    assert ex["answer"] == rec["conversations"][1]["value"]
  with open(tmp_path / f"embedded_position_{ep.VERSION}" / "grid_where_train.jsonl") as f:
    assert len([json.loads(line) for line in f]) == 8
