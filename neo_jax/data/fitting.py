"""Fitting a sample into what the run can hold, before giving it up (issue 22).

A training run holds samples of at most ``max_tokens`` tokens (the smaller of
``seq_len`` and ``model.max_sample_tokens``) with at most ``max_visual_tokens``
visual tokens (``model.max_visual_tokens``). A record whose media at the
configured processing options would exceed that is *fitted* instead of dropped,
in this order, always keeping its text whole:

1. a video keeps fewer frames, sampled uniformly over the whole clip (each
   frame keeps its own exact timestamp and the per-frame pixel budget it had),
   down to ``min_frames`` (default 8, or the frames it had if fewer);
2. then every image / frame gets fewer pixels (a smaller ``smart_resize``
   budget, so aspect ratios are kept), down to the source's ``min_pixels``
   (``video_min_pixels`` for frames).

Only a sample that cannot fit at both floors is skipped (``too_long``). The
planning here is pure arithmetic on the media sizes (no pixel is decoded):
``smart_resize`` (the release's ``data/utils.py`` / Qwen2-VL rule) gives the
token grid of each image at a budget, and the visual tokens of a sample are the
sum of the grids' areas; its text (including ``<img>`` / ``</img>`` and the video
timestamps) is counted by the caller with the real tokenizer.

Token count is non-decreasing in the budget and in the frame count, so each step
is a binary search; the result is re-checked by the caller on the real tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from neo_jax.data import images as images_lib

FITTED_FRAMES = "frames"   # the sample kept fewer video frames
FITTED_PIXELS = "pixels"   # the sample's images / frames got fewer pixels
DEFAULT_MIN_FRAMES = 8


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one sample may hold.

  max_tokens: [tokens] longest sample, 0 = no limit (no fitting).
  max_visual_tokens: [tokens] visual tokens of one sample, 0 = no limit.
  """
  max_tokens: int = 0
  max_visual_tokens: int = 0

  @property
  def active(self) -> bool:
    return self.max_tokens > 0 or self.max_visual_tokens > 0

  def fits(self, tokens: int, visual: int) -> bool:
    """Whether ``tokens`` total / ``visual`` visual tokens fit."""
    return ((not self.max_tokens or tokens <= self.max_tokens)
            and (not self.max_visual_tokens or visual <= self.max_visual_tokens))

  def describe(self) -> str:
    parts = []
    if self.max_tokens:
      parts.append(f"{self.max_tokens} tokens")
    if self.max_visual_tokens:
      parts.append(f"{self.max_visual_tokens} visual tokens")
    return " / ".join(parts) or "no limit"


def grid_tokens(size_hw: tuple[int, int], min_pixels: int, max_pixels: int) -> int:
  """Visual tokens of an image of ``(height, width)`` pixels at a budget.

  ``smart_resize(h, w, 32, min_pixels, max_pixels)`` then one token per 32x32
  pixels. Raises ``BadSample("aspect_ratio")`` like ``smart_resize``.
  """
  rh, rw = images_lib.smart_resize(size_hw[0], size_hw[1], images_lib.FACTOR, min_pixels,
                                   max_pixels)
  return (rh // images_lib.FACTOR) * (rw // images_lib.FACTOR)


def _largest(lo: int, hi: int, ok: Callable[[int], bool]) -> int | None:
  """The largest ``x`` in ``[lo, hi]`` with ``ok(x)`` (``ok`` monotone: true up to a
  point), or None when ``ok(lo)`` is false."""
  if not ok(lo):
    return None
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if ok(mid):
      lo = mid
    else:
      hi = mid - 1
  return lo


def fit_image_budget(sizes_hw: Sequence[tuple[int, int]], text_tokens: int, min_pixels: int,
                     budget: int, limits: Limits) -> int | None:
  """The largest per-image pixel budget at which a sample of images fits.

  Args:
    sizes_hw: ``(height, width)`` [pixels] of each image as decoded.
    text_tokens: [tokens] the sample without its visual tokens (``<img>`` and
      ``</img>`` included).
    min_pixels: [pixels] the floor (the source's ``min_pixels``).
    budget: [pixels] the per-image budget at the configured options (already
      shared between the images, ``images.per_image_max_pixels``).
    limits: what the sample may hold.
  Returns:
    ``budget`` when the sample fits as configured, a smaller budget >=
    ``min_pixels`` when it fits only with fewer pixels, else None.
  """
  def ok(b: int) -> bool:
    vis = sum(grid_tokens(s, min_pixels, b) for s in sizes_hw)
    return limits.fits(text_tokens + vis, vis)

  if not limits.active or ok(budget):
    return budget
  return _largest(min(min_pixels, budget), budget, ok)


@dataclasses.dataclass(frozen=True)
class VideoPlan:
  """How many frames a video keeps and each frame's pixel budget.

  num_frames: frames sampled uniformly over the clip.
  frame_max_pixels: [pixels] ``smart_resize`` budget of every frame.
  fitted: "" (as configured), ``FITTED_FRAMES`` or ``FITTED_PIXELS``.
  """
  num_frames: int
  frame_max_pixels: int
  fitted: str = ""


def fit_video(size_hw: tuple[int, int], num_frames: int, text_tokens: Callable[[int], int],
              frame_min_pixels: int, frame_max_pixels: int, limits: Limits,
              min_frames: int = DEFAULT_MIN_FRAMES) -> VideoPlan | None:
  """Frames, then pixels per frame, for a video sample to fit (module docstring).

  Args:
    size_hw: ``(height, width)`` [pixels] of the video's frames.
    num_frames: frames sampled at the configured rate and cap.
    text_tokens: ``n -> `` [tokens] of the sample with ``n`` frames and no visual
      tokens (the timestamp lines grow with ``n``); non-decreasing in ``n``.
    frame_min_pixels / frame_max_pixels: [pixels] the per-frame floor and the
      per-frame budget at the configured options.
    limits: what the sample may hold; min_frames: the frame floor.
  Returns:
    the plan, or None when even ``min(min_frames, num_frames)`` frames at
    ``frame_min_pixels`` do not fit.
  """
  def ok(n: int, b: int) -> bool:
    vis = n * grid_tokens(size_hw, frame_min_pixels, b)
    return limits.fits(text_tokens(n) + vis, vis)

  if not limits.active or ok(num_frames, frame_max_pixels):
    return VideoPlan(num_frames, frame_max_pixels)
  floor = max(1, min(min_frames, num_frames))
  n = _largest(floor, num_frames, lambda k: ok(k, frame_max_pixels))
  if n is not None:
    return VideoPlan(n, frame_max_pixels, FITTED_FRAMES)
  b = _largest(min(frame_min_pixels, frame_max_pixels), frame_max_pixels,
               lambda px: ok(floor, px))
  if b is None:
    return None
  return VideoPlan(floor, b, FITTED_PIXELS)
