"""The embedded default data set: small, checkable tasks built from dependency images.

Built deterministically on first use under ``cache_dir`` (default
``$NEO_JAX_CACHE`` or ``~/.cache/neo_jax``) from real images shipped by
scikit-learn (8x8 handwritten digits, ``china.jpg``, ``flower.jpg``) and
scikit-image (photographs, the motorcycle stereo pair, the animated GIF
``no_time_for_that_tiny.gif``). Each task has a ``train`` and a ``heldout``
split written as release-format JSONL (docs/design.md §3.3) next to its PNG / MKV
files. Digit-based tasks split by the original digit index (index % 5 == 0 is
held out), so no held-out digit drawing is seen in training.

Tasks (what each tests is in BUILD_NOTES.md §3):
  text        text only: 2-digit addition / digit-string copying.
  digit       one 32x32 image (1 visual token): which digit, answer "0".."9".
  aspect      photo crops at aspect ratios 1:4 .. 4:1, stored as RGB / L / P /
              RGBA: orientation (wide / tall / square) or source photo name.
  spatial     a digit on a 96x96 canvas (3x3 tokens): which of 9 places.
  multi_image two digit images, two turns: first image's digit, then which is
              larger; or two stereo-pair / unrelated crops: same scene yes/no.
  video       a digit moving across 4 frames (FFV1 .mkv decoded by PyAV):
              direction or which digit; or 4 GIF frames (frame list):
              played forward or backward.

Registered from ``data/embedded_position.py`` (built into their own cache folder,
``embedded_position_v1``, so this module's ``embedded_v1`` stays as it was):
  grid_where / grid_relation / grid_count / grid_read: marks on grids of varied
              size and aspect ratio; the answer depends on the marks' cells; the
              held-out grids have sizes never trained on (the Table 3 ablation).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Callable

import numpy as np
import tqdm
from PIL import Image

from neo_jax.data import atomic_dir
from neo_jax.data import embedded_position

VERSION = "v1"
SPLITS = ("train", "heldout")
SPATIAL_NAMES = ("top-left", "top", "top-right", "left", "center", "right", "bottom-left",
                 "bottom", "bottom-right")
PHOTO_NAMES = ("astronaut", "coffee", "cat", "rocket", "palace", "flower")

# Processing options each task sets for itself (ProcessOptions fields).
TASK_OPTIONS = {
    "text": {},
    "digit": {"min_pixels": 1024, "max_pixels": 1024},
    "aspect": {"min_pixels": 2048, "max_pixels": 16384},
    "spatial": {"min_pixels": 9216, "max_pixels": 9216},
    "multi_image": {"min_pixels": 1024, "max_pixels": 1024},
    "video": {"video_fps": 1.0, "max_frames": 8, "video_min_pixels": 1024,
              "video_max_pixels": 12288, "frame_list_fps": 1.0},
}
TASKS = tuple(TASK_OPTIONS)   # built into ``embedded_{VERSION}`` (``build``), in seed order
# The position tasks (``embedded_position``): their own cache folder and builder.
POSITION_TASKS = embedded_position.TASKS
ALL_TASKS = TASKS + POSITION_TASKS
TASK_OPTIONS.update(embedded_position.TASK_OPTIONS)
# Counts per split; digit-based held-out sets use every held-out digit once.
TRAIN_SIZES = {"text": 5000, "digit": 4, "aspect": 2000, "spatial": 3000, "multi_image": 3000,
               "video": 2000}
HELDOUT_SIZES = {"text": 300, "aspect": 200, "multi_image": 300, "video": 200}


def default_cache_dir() -> str:
  """``$NEO_JAX_CACHE`` or ``~/.cache/neo_jax``."""
  return os.environ.get("NEO_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "neo_jax")


def dataset_dir(cache_dir: str | None = None) -> str:
  """Directory of the built data set (builds it first if absent)."""
  root = os.path.join(cache_dir or default_cache_dir(), f"embedded_{VERSION}")
  if not os.path.exists(os.path.join(root, "DONE")):
    build(root)
  return root


def load_records(task: str, split: str = "train", cache_dir: str | None = None) -> list[dict]:
  """Release-format records of one task and split, ``data_path`` set.

  Raises:
    ValueError: unknown task or split.
  """
  if task not in ALL_TASKS or split not in SPLITS:
    raise ValueError(f"unknown embedded task/split {task!r}/{split!r}; tasks {ALL_TASKS}, "
                     f"splits {SPLITS}.")
  if task in POSITION_TASKS:
    return embedded_position.load_records(task, split, cache_dir or default_cache_dir())
  root = dataset_dir(cache_dir)
  with open(os.path.join(root, f"{task}_{split}.jsonl")) as f:
    recs = [json.loads(line) for line in f]
  for r in recs:
    r["data_path"] = root
  return recs


# ---------------------------------------------------------------- sources
def _digits():
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  d = load_digits()
  return d.images.astype(np.float64) / 16.0, d.target.astype(int)


def _digit_split(n: int, split: str) -> np.ndarray:
  idx = np.arange(n)
  return idx[idx % 5 == 0] if split == "heldout" else idx[idx % 5 != 0]


def _draw_digit(img8: np.ndarray, rng: np.random.Generator, size: int = 24) -> np.ndarray:
  """8x8 digit -> ``[size, size] float`` in 0..1 with contrast jitter."""
  big = Image.fromarray((img8 * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
  return np.asarray(big, np.float64) / 255.0 * rng.uniform(0.75, 1.0)


def _canvas_digit(img8, rng, canvas_hw, cell_yx, jitter=2) -> np.ndarray:
  """Digit placed on a black canvas at ``cell_yx`` (top-left) +- jitter; uint8 RGB."""
  h, w = canvas_hw
  canvas = np.zeros((h, w), np.float64)
  y = int(np.clip(cell_yx[0] + rng.integers(-jitter, jitter + 1), 0, h - 24))
  x = int(np.clip(cell_yx[1] + rng.integers(-jitter, jitter + 1), 0, w - 24))
  canvas[y:y + 24, x:x + 24] = _draw_digit(img8, rng)
  g = (canvas * 255).astype(np.uint8)
  return np.stack([g, g, g], -1)


def _photos() -> dict[str, np.ndarray]:
  import skimage.data as skd  # pylint: disable=import-outside-toplevel
  from sklearn.datasets import load_sample_image  # pylint: disable=import-outside-toplevel
  full = {"astronaut": skd.astronaut(), "coffee": skd.coffee(), "cat": skd.chelsea(),
          "rocket": skd.rocket(), "palace": load_sample_image("china.jpg"),
          "flower": load_sample_image("flower.jpg")}
  return {k: _shrink(v) for k, v in full.items()}


def _shrink(arr: np.ndarray, side: int = 256) -> np.ndarray:
  """Downscales so the longer side is ``side`` px (keeps the cache small)."""
  h, w = arr.shape[:2]
  s = side / max(h, w)
  img = Image.fromarray(arr).resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC)
  return np.asarray(img)


def _conv(user: str, answer: str) -> list[dict]:
  return [{"from": "human", "value": user}, {"from": "gpt", "value": answer}]


class _Writer:
  def __init__(self, root: str, task: str, split: str):
    self.root, self.rel = root, os.path.join(task, split)
    os.makedirs(os.path.join(root, self.rel), exist_ok=True)
    self.k = 0

  def png(self, arr_or_img, mode: str | None = None) -> str:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    if mode and img.mode != mode:
      img = img.convert(mode)
    rel = os.path.join(self.rel, f"{self.k:05d}.png")
    self.k += 1
    img.save(os.path.join(self.root, rel))
    return rel

  def mkv(self, frames: list[np.ndarray], fps: int = 1) -> str:
    import av  # pylint: disable=import-outside-toplevel
    rel = os.path.join(self.rel, f"{self.k:05d}.mkv")
    self.k += 1
    with av.open(os.path.join(self.root, rel), "w") as c:
      s = c.add_stream("ffv1", rate=fps)
      s.height, s.width = frames[0].shape[:2]
      s.pix_fmt = "bgr0"
      for fr in frames:
        for p in s.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
          c.mux(p)
      for p in s.encode():
        c.mux(p)
    return rel


# ---------------------------------------------------------------- tasks
def _task_text(root, split, rng) -> list[dict]:
  n = TRAIN_SIZES["text"] if split == "train" else HELDOUT_SIZES["text"]
  out = []
  while len(out) < n:
    if rng.random() < 0.7:
      a, b = rng.integers(10, 100, size=2)
      if ((a * 100 + b) % 10 == 0) != (split == "heldout"):  # held-out: pairs with (a*100+b)%10==0.
        continue
      out.append({"conversations": _conv(f"What is {a} + {b}? Answer with the number.", str(a + b))})
    else:
      s = "".join(str(d) for d in rng.integers(0, 10, size=int(rng.integers(3, 7))))
      if (int(s) % 10 == 0) != (split == "heldout"):
        continue
      out.append({"conversations": _conv(f"Copy this digit string exactly: {s}", s)})
  return out


def _task_digit(root, split, rng) -> list[dict]:
  imgs, tgt = _digits()
  w = _Writer(root, "digit", split)
  reps = TRAIN_SIZES["digit"] if split == "train" else 1
  out = []
  for _ in range(reps):
    for i in _digit_split(len(imgs), split):
      rel = w.png(_canvas_digit(imgs[i], rng, (32, 32), (4, 4)))
      out.append({"image": rel, "conversations": _conv(
          "<image>\nWhat digit is shown in the image? Answer with a single digit.", str(tgt[i]))})
  return out


def _task_aspect(root, split, rng) -> list[dict]:
  photos = _photos()
  ratios = (1 / 4, 1 / 3, 1 / 2, 2 / 3, 1.0, 3 / 2, 2.0, 3.0, 4.0)  # width / height
  w = _Writer(root, "aspect", split)
  n = TRAIN_SIZES["aspect"] if split == "train" else HELDOUT_SIZES["aspect"]
  out = []
  for _ in range(n):
    name = PHOTO_NAMES[int(rng.integers(len(PHOTO_NAMES)))]
    ph = photos[name]
    r = ratios[int(rng.integers(len(ratios)))]
    ph_h, ph_w = ph.shape[:2]
    ch = int(rng.integers(32, min(ph_h, int(ph_w / r)) + 1))
    cw = max(8, int(round(ch * r)))
    y, x = int(rng.integers(0, ph_h - ch + 1)), int(rng.integers(0, ph_w - cw + 1))
    mode = ("RGB", "RGB", "L", "P", "RGBA")[int(rng.integers(5))]
    rel = w.png(ph[y:y + ch, x:x + cw], mode)
    if rng.random() < 0.5:
      ans = "wide" if r > 1 else ("tall" if r < 1 else "square")
      q = "Is this image wide, tall or square? Answer with one word."
    else:
      ans = name
      q = "Which photo is this crop from? Answer one of: " + ", ".join(PHOTO_NAMES) + "."
    out.append({"image": rel, "conversations": _conv("<image>\n" + q, ans)})
  return out


def _task_spatial(root, split, rng) -> list[dict]:
  imgs, _ = _digits()
  idx = _digit_split(len(imgs), split)
  w = _Writer(root, "spatial", split)
  n = TRAIN_SIZES["spatial"] if split == "train" else len(idx)
  out = []
  for k in range(n):
    i = idx[k % len(idx)] if split == "heldout" else idx[int(rng.integers(len(idx)))]
    cell = int(rng.integers(9))
    rel = w.png(_canvas_digit(imgs[i], rng, (96, 96), (32 * (cell // 3) + 4, 32 * (cell % 3) + 4)))
    out.append({"image": rel, "conversations": _conv(
        "<image>\nWhere is the digit in the image? Answer one of: " + ", ".join(SPATIAL_NAMES) + ".",
        SPATIAL_NAMES[cell])})
  return out


def _task_multi_image(root, split, rng) -> list[dict]:
  import skimage.data as skd  # pylint: disable=import-outside-toplevel
  imgs, tgt = _digits()
  idx = _digit_split(len(imgs), split)
  left, right = (_shrink(x) for x in skd.stereo_motorcycle()[:2])
  others = list(_photos().values())
  w = _Writer(root, "multi_image", split)
  n = TRAIN_SIZES["multi_image"] if split == "train" else HELDOUT_SIZES["multi_image"]
  out = []
  while len(out) < n:
    if rng.random() < 0.75:
      i, j = idx[rng.integers(len(idx), size=2)]
      if tgt[i] == tgt[j]:
        continue
      a = w.png(_canvas_digit(imgs[i], rng, (32, 32), (4, 4)))
      b = w.png(_canvas_digit(imgs[j], rng, (32, 32), (4, 4)))
      out.append({"images": [a, b], "conversations": [
          {"from": "human", "value": "<image>\n<image>\nWhat digit is in the first image?"},
          {"from": "gpt", "value": str(tgt[i])},
          {"from": "human", "value": "Which image shows the larger digit? Answer first or second."},
          {"from": "gpt", "value": "first" if tgt[i] > tgt[j] else "second"}]})
    else:
      s = int(rng.integers(48, 97))
      y, x = int(rng.integers(0, left.shape[0] - s)), int(rng.integers(0, left.shape[1] - s))
      same = bool(rng.random() < 0.5)
      a = w.png(left[y:y + s, x:x + s])
      if same:
        b = w.png(right[y:y + s, x:x + s])
      else:
        other = others[int(rng.integers(len(others)))]
        y2, x2 = int(rng.integers(0, other.shape[0] - s)), int(rng.integers(0, other.shape[1] - s))
        b = w.png(other[y2:y2 + s, x2:x2 + s])
      out.append({"images": [a, b], "conversations": _conv(
          "Image 1: <image>\nImage 2: <image>\nDo the two images show the same scene? Answer yes or no.",
          "yes" if same else "no")})
  return out


def _gif_frames() -> list[np.ndarray]:
  import skimage  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(skimage.__file__), "data", "no_time_for_that_tiny.gif")
  im = Image.open(path)
  frames = []
  for k in range(im.n_frames):
    im.seek(k)
    frames.append(im.copy())  # P mode frames, converted by the pipeline.
  return frames


def _task_video(root, split, rng) -> list[dict]:
  imgs, tgt = _digits()
  idx = _digit_split(len(imgs), split)
  gif = _gif_frames()
  w = _Writer(root, "video", split)
  n = TRAIN_SIZES["video"] if split == "train" else HELDOUT_SIZES["video"]
  out = []
  for _ in range(n):
    if rng.random() < 0.75:
      i = idx[int(rng.integers(len(idx)))]
      right = bool(rng.random() < 0.5)
      xs = np.linspace(2, 70, 4).round().astype(int)
      xs = xs if right else xs[::-1]
      frames = [_canvas_digit(imgs[i], rng, (32, 96), (4, int(x)), jitter=1) for x in xs]
      rel = w.mkv(frames, fps=1)
      if rng.random() < 0.5:
        conv = _conv("<video>\nIn which direction does the digit move? Answer left or right.",
                     "right" if right else "left")
      else:
        conv = _conv("<video>\nWhich digit moves across the video? Answer with a single digit.", str(tgt[i]))
      out.append({"video": rel, "conversations": conv})
    else:
      start = int(rng.integers(0, len(gif) - 4))
      forward = bool(rng.random() < 0.5)
      order = list(range(start, start + 4))
      order = order if forward else order[::-1]
      rels = [w.png(gif[k]) for k in order]
      out.append({"video": {"frames": rels, "fps": 1.0}, "conversations": _conv(
          "<video>\nIs this clip playing forward or backward? Answer with one word.",
          "forward" if forward else "backward")})
  return out


_BUILDERS: dict[str, Callable] = {"text": _task_text, "digit": _task_digit, "aspect": _task_aspect,
                                  "spatial": _task_spatial, "multi_image": _task_multi_image,
                                  "video": _task_video}


def build(root: str) -> None:
  """Builds every ``TASKS`` task and split into ``root`` (atomic: temp dir + rename).

  Deterministic: a fixed seed per (task, split).
  """
  tmp = f"{root}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  print(f"Building the embedded data set into {root} (once; about a minute).", flush=True)
  parts = [(t_i, task, s_i, split) for t_i, task in enumerate(TASKS)
           for s_i, split in enumerate(SPLITS)]
  for t_i, task, s_i, split in tqdm.tqdm(parts, desc="embedded data", unit="split",
                                         mininterval=1.0):
    rng = np.random.default_rng([20251, t_i, s_i])
    recs = _BUILDERS[task](tmp, split, rng)
    with open(os.path.join(tmp, f"{task}_{split}.jsonl"), "w") as f:
      for k, r in enumerate(recs):
        r["id"] = f"{task}/{split}/{k}"
        f.write(json.dumps(r) + "\n")
  atomic_dir.publish(tmp, root, VERSION)
