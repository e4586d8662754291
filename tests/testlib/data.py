"""Independent reference computations shared by the data tests (not library code)."""

from __future__ import annotations

import math

import numpy as np

from neo_jax.core import tokens as model_config

CTX = model_config.IMG_CONTEXT_TOKEN_ID
IMG_START = model_config.IMG_START_TOKEN_ID


def round_half_even(x_num: int, den: int) -> int:
  """round(x_num / den) with ties to even, in integer arithmetic."""
  q, r = divmod(x_num, den)
  if 2 * r > den or (2 * r == den and q % 2 == 1):
    q += 1
  return q


def ref_smart_resize(h: int, w: int, min_px: int, max_px: int, f: int = 32) -> tuple[int, int]:
  """docs/design.md §3.2 written independently (integer rounding, explicit branches)."""
  assert max(h, w) <= 200 * min(h, w)
  hb = max(f, round_half_even(h, f) * f)
  wb = max(f, round_half_even(w, f) * f)
  if hb * wb > max_px:
    scale = math.sqrt(max_px / (h * w))
    hb = max(f, int(h * scale / f) * f)
    wb = max(f, int(w * scale / f) * f)
  elif hb * wb < min_px:
    scale = math.sqrt(min_px / (h * w))
    hb = -(-h * scale // f) * f
    wb = -(-w * scale // f) * f
  return int(hb), int(wb)


def ref_budget(max_px: int, min_px: int, n: int) -> int:
  return max_px if n == 1 else max(2 * max_px // n, min_px)


def ref_thw(ids: np.ndarray, token_hw: np.ndarray, segment_ids: np.ndarray | None = None):
  """docs/design.md §1.3 by an explicit loop: returns (t, h, w) per token."""
  t = np.zeros(len(ids), np.int64)
  cur, prev_seg, ctx_counted = -1, None, False
  for i, tok in enumerate(ids):
    seg = None if segment_ids is None else segment_ids[i]
    if seg != prev_seg:
      cur, prev_seg = -1, seg
    if tok == CTX:
      if not ctx_counted:
        cur += 1
        ctx_counted = True
    else:
      cur += 1
      if tok == IMG_START:
        ctx_counted = False
    t[i] = cur
  h = np.where(ids == CTX, token_hw[:, 0], 0)
  w = np.where(ids == CTX, token_hw[:, 1], 0)
  return t, h, w


def ref_patches(rgb: np.ndarray) -> np.ndarray:
  """Visual-token patches by explicit loops: [n, 4, 768]."""
  h, w, _ = rgb.shape
  out = []
  for r in range(h // 32):
    for c in range(w // 32):
      quads = []
      for dy in (0, 1):
        for dx in (0, 1):
          y0, x0 = (2 * r + dy) * 16, (2 * c + dx) * 16
          p = rgb[y0:y0 + 16, x0:x0 + 16, :]  # y, x, c
          quads.append(np.concatenate([p[:, :, ch].ravel() for ch in range(3)]))
      out.append(np.stack(quads))
  return np.stack(out).astype(np.uint8)


def take(it, n: int) -> list:
  """The next ``n`` items of an iterator."""
  return [next(it) for _ in range(n)]


def assert_batches_equal(a: list, b: list) -> None:
  """Two lists of batch dicts hold the same keys and bit-equal arrays."""
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)
