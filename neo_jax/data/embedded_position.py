"""Embedded tasks where 2D position is the signal: marks on grids of varied size and shape.

The tasks of the Table 3 ablation (BUILD_NOTES §0e). Every image is a grid of
``h x w`` visual-token cells (32 x 32 pixels each, ``geometry.TOKEN_PIXELS``: one
cell = one visual token at native resolution) with one or a few bright square
marks, each inside one cell, on a dark background. What is asked depends on
the marks' (row, column) cells, not on their look, and the grids vary in width and
height, so a flattened 1D index has no fixed row length.

Tasks (answers are short exact-match strings):
  grid_where     one white mark: "Which row and column is the mark in?" -> "r,c"
                 (1-based).
  grid_relation  a red and a blue mark: red left or right of blue (different
                 columns) / above or below blue (different rows) -> one word.
  grid_count     white marks: "How many marks are in row r?" -> "0".."3"; other
                 rows hold 0-2 distractor marks.
  grid_read      three marks of distinct colours (red, green, blue, yellow): their
                 colours in reading order (row-major) -> "red blue green".

Splits: ``train`` images have every side in 1..6 cells (2..24 cells in all);
``heldout`` images have a side of 7 or 8 cells (``HELDOUT_SHAPES``), a size and
aspect ratio never trained on (the native-resolution claim is about such sizes),
with every mark in rows and columns 1..6, so each held-out answer is one a
trained model can write.

Built deterministically (a fixed seed per task and split) into
``{cache_dir}/embedded_position_{VERSION}`` on first use, separately from the
``embedded_v1`` tasks, whose cache stays as it was. ``data/embedded.py`` registers
these tasks (``embedded.load_records`` / ``TASKS`` / ``TASK_OPTIONS``).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
from PIL import Image

from neo_jax.data import atomic_dir

VERSION = "v1"
SPLITS = ("train", "heldout")
CELL = 32                      # [pixels] a visual token's side (patch 16 x merge 2)
MAX_MARK_INDEX = 6             # marks lie in rows / columns 1..6 (1-based) in every split
MAX_TRAIN_CELLS = 24
TRAIN_SHAPES = tuple((h, w) for h in range(1, 7) for w in range(1, 7)
                     if 2 <= h * w <= MAX_TRAIN_CELLS)
HELDOUT_SHAPES = tuple(sorted({s for a in (7, 8) for b in (1, 2, 3)
                               for s in ((a, b), (b, a))}))
COLOURS = {"red": (235, 30, 30), "green": (30, 220, 30), "blue": (40, 60, 245),
           "yellow": (235, 225, 30), "white": (235, 235, 235)}
READ_COLOURS = ("red", "green", "blue", "yellow")
# Native resolution: every grid (<= 24 cells) stays at its size, no resizing.
_OPTIONS = {"min_pixels": CELL * CELL, "max_pixels": CELL * CELL * 32}
TASK_OPTIONS = {"grid_where": dict(_OPTIONS), "grid_relation": dict(_OPTIONS),
                "grid_count": dict(_OPTIONS), "grid_read": dict(_OPTIONS)}
TASKS = tuple(TASK_OPTIONS)
SIZES = {"train": 4000, "heldout": 240}

PROMPTS = {
    "grid_where": "Which row and column is the mark in? Answer row,column.",
    "grid_relation": "Is the red mark {a} or {b} the blue mark? Answer with one word.",
    "grid_count": "How many marks are in row {r}? Answer with a number.",
    "grid_read": "List the colours of the marks in reading order.",
}


def shapes(split: str) -> tuple[tuple[int, int], ...]:
  """The ``(rows, cols)`` grid shapes of a split, in cells.

  Raises:
    ValueError: unknown split.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; splits {SPLITS}.")
  return TRAIN_SHAPES if split == "train" else HELDOUT_SHAPES


def render(shape: tuple[int, int], marks: dict[tuple[int, int], str],
           rng: np.random.Generator) -> np.ndarray:
  """A grid image: ``[32 h, 32 w, 3] uint8``.

  Background: one grey level in 0..30 per image (flat, so the PNGs stay small).
  Each mark: a square of side 14..24 px, at a random offset at least 3 px inside
  its cell, in ``COLOURS[name]`` scaled by 0.85..1.0.

  Args:
    shape: (rows, cols) in cells.
    marks: ``{(row, col) 0-based: colour name}``.
  Raises:
    ValueError: a mark outside the grid or an unknown colour.
  """
  h, w = shape
  img = np.full((h * CELL, w * CELL, 3), float(rng.integers(0, 31)))
  for (r, c), name in sorted(marks.items()):
    if not (0 <= r < h and 0 <= c < w) or name not in COLOURS:
      raise ValueError(f"mark {name!r} at {(r, c)} does not fit a {h}x{w} grid.")
    s = int(rng.integers(14, 25))
    y = r * CELL + int(rng.integers(3, CELL - 3 - s + 1))
    x = c * CELL + int(rng.integers(3, CELL - 3 - s + 1))
    img[y:y + s, x:x + s] = np.asarray(COLOURS[name], np.float64) * rng.uniform(0.85, 1.0)
  return img.astype(np.uint8)


def _cells(shape, rng, k: int, rows=None) -> list[tuple[int, int]]:
  """``k`` distinct cells (0-based) with row and column < ``MAX_MARK_INDEX``
  (and the row in ``rows`` when given)."""
  h, w = (min(s, MAX_MARK_INDEX) for s in shape)
  free = [(r, c) for r in range(h) for c in range(w) if rows is None or r in rows]
  pick = rng.choice(len(free), size=k, replace=False)
  return [free[int(i)] for i in pick]


def _where(shape, rng):
  (r, c), = _cells(shape, rng, 1)
  return {(r, c): "white"}, PROMPTS["grid_where"], f"{r + 1},{c + 1}"


def _relation(shape, rng):
  h, w = (min(s, MAX_MARK_INDEX) for s in shape)
  horizontal = w > 1 and (h == 1 or rng.random() < 0.5)
  while True:
    red, blue = _cells(shape, rng, 2)
    if (red[1] != blue[1]) if horizontal else (red[0] != blue[0]):
      break
  if horizontal:
    q, ans = PROMPTS["grid_relation"].format(a="left", b="right of"), (
        "left" if red[1] < blue[1] else "right")
  else:
    q, ans = PROMPTS["grid_relation"].format(a="above", b="below"), (
        "above" if red[0] < blue[0] else "below")
  return {red: "red", blue: "blue"}, q, ans


def _count(shape, rng):
  h, w = (min(s, MAX_MARK_INDEX) for s in shape)
  row = int(rng.integers(h))
  k = int(rng.integers(0, min(3, w) + 1))
  marks = {cell: "white" for cell in (_cells(shape, rng, k, rows={row}) if k else [])}
  others = h * w - w
  extra = int(rng.integers(0, min(2, others) + 1)) if others else 0
  if extra:
    marks.update({cell: "white" for cell in _cells(shape, rng, extra,
                                                    rows=set(range(h)) - {row})})
  return marks, PROMPTS["grid_count"].format(r=row + 1), str(k)


def _read(shape, rng):
  cells = sorted(_cells(shape, rng, 3))       # row-major order
  names = [READ_COLOURS[int(i)] for i in rng.choice(len(READ_COLOURS), size=3, replace=False)]
  return dict(zip(cells, names)), PROMPTS["grid_read"], " ".join(names)


_MAKERS = {"grid_where": _where, "grid_relation": _relation, "grid_count": _count,
           "grid_read": _read}
# The fewest cells (within rows / columns 1..6) a task needs.
_MIN_CELLS = {"grid_where": 1, "grid_relation": 2, "grid_count": 1, "grid_read": 3}


def generate(task: str, split: str, n: int, rng: np.random.Generator,
             out_dir: str, rel_dir: str) -> list[dict]:
  """``n`` release-format records of ``task`` (PNG files written under
  ``{out_dir}/{rel_dir}``, ``image`` relative to ``out_dir``).

  Shapes are drawn uniformly from ``shapes(split)`` (those with enough cells).

  Raises:
    ValueError: unknown task or split.
  """
  if task not in _MAKERS:
    raise ValueError(f"unknown position task {task!r}; tasks {TASKS}.")
  usable = [s for s in shapes(split)
            if min(s[0], MAX_MARK_INDEX) * min(s[1], MAX_MARK_INDEX) >= _MIN_CELLS[task]]
  os.makedirs(os.path.join(out_dir, rel_dir), exist_ok=True)
  out = []
  for k in range(n):
    shape = usable[int(rng.integers(len(usable)))]
    marks, question, answer = _MAKERS[task](shape, rng)
    rel = os.path.join(rel_dir, f"{k:05d}.png")
    Image.fromarray(render(shape, marks, rng)).save(os.path.join(out_dir, rel))
    out.append({"image": rel, "conversations": [
        {"from": "human", "value": "<image>\n" + question},
        {"from": "gpt", "value": answer}]})
  return out


def dataset_dir(cache_dir: str) -> str:
  """``{cache_dir}/embedded_position_{VERSION}``, built first if absent."""
  root = os.path.join(cache_dir, f"embedded_position_{VERSION}")
  if not os.path.exists(os.path.join(root, "DONE")):
    build(root)
  return root


def load_records(task: str, split: str, cache_dir: str) -> list[dict]:
  """Release-format records of one task and split, ``data_path`` set.

  Raises:
    ValueError: unknown task or split.
  """
  if task not in TASKS or split not in SPLITS:
    raise ValueError(f"unknown position task/split {task!r}/{split!r}; tasks {TASKS}.")
  root = dataset_dir(cache_dir)
  with open(os.path.join(root, f"{task}_{split}.jsonl"), encoding="utf-8") as f:
    recs = [json.loads(line) for line in f]
  for r in recs:
    r["data_path"] = root
  return recs


def build(root: str, sizes: dict[str, int] | None = None) -> None:
  """Builds every task and split into ``root`` (atomic: temp dir + rename).

  Deterministic: seed ``[20252, task index, split index]``. ``sizes``: records
  per split (default ``SIZES``).
  """
  sizes = sizes or SIZES
  tmp = f"{root}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  print(f"Building the embedded position tasks into {root} (once; about a minute).",
        flush=True)
  for t_i, task in enumerate(TASKS):
    for s_i, split in enumerate(SPLITS):
      rng = np.random.default_rng([20252, t_i, s_i])
      recs = generate(task, split, sizes[split], rng, tmp, os.path.join(task, split))
      with open(os.path.join(tmp, f"{task}_{split}.jsonl"), "w", encoding="utf-8") as f:
        for k, r in enumerate(recs):
          r["id"] = f"{task}/{split}/{k}"
          f.write(json.dumps(r) + "\n")
  atomic_dir.publish(tmp, root, VERSION)
