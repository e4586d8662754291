"""Video: frame sampling, PyAV decoding and the timestamped prompt (NEO_SPEC §3.4).

A video becomes f frames (each its own image unit) preceded by the global
prefix line and, per frame, ``[MM:SS.ss]:<image>\\n``; the ``<image>`` tags
are expanded like any image. A list of frame images (paths / arrays) with an
fps is accepted as a video too.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from PIL import Image

from neo_jax.core import paths
from neo_jax.data.errors import BadSample
from neo_jax.data import images as images_lib

MAX_FRAMES = 128


def sample_frame_indices(num_frames: int, native_fps: float, target_fps: float,
                         max_frames: int = MAX_FRAMES) -> list[int]:
  """Frame indices sampled uniformly at ``target_fps``, at most ``max_frames``.

  ``n = int(duration * target_fps)`` frames at step ``native_fps / target_fps``
  (the release's Video-MME loader); if that exceeds ``max_frames`` (or the
  frame count) ``n`` is capped and the step becomes ``num_frames / n``.
  At least one frame.

  Args:
    num_frames: frames in the video (> 0); native_fps: [frames/s] of the file;
    target_fps: [frames/s] wanted; max_frames: cap (<= 128 by NEO-ov).
  Returns:
    increasing frame indices in ``[0, num_frames)``.
  Raises:
    ValueError: non-positive counts or rates.
  """
  if num_frames <= 0 or native_fps <= 0 or target_fps <= 0 or max_frames <= 0:
    raise ValueError(f"bad video sampling args {num_frames=} {native_fps=} {target_fps=} {max_frames=}")
  n_fps = int(num_frames / native_fps * target_fps)
  n = max(1, min(n_fps, max_frames, num_frames))
  step = native_fps / target_fps if n == n_fps else num_frames / n
  return [min(int(i * step), num_frames - 1) for i in range(n)]


def _mmss(seconds: float) -> str:
  return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"


def _mmss_frac(seconds: float) -> str:
  return f"{int(seconds // 60):02d}:{seconds % 60:05.2f}"


def video_prompt(duration: float, timestamps: Sequence[float]) -> str:
  """The NEO-ov video text with one ``<image>`` tag per frame (NEO_SPEC §3.4).

  Args:
    duration: [s] length of the video; timestamps: [s] time of each frame.
  Returns:
    ``"The time range of this video is [00:00-MM:SS], and the following is a
    series of {f} frames sampled at {f/duration:.1f} FPS.\\n"`` followed by
    ``"[MM:SS.ss]:<image>\\n"`` per frame.
  """
  f = len(timestamps)
  fps = f / duration if duration > 0 else 0.0
  head = (f"The time range of this video is [00:00-{_mmss(duration)}], and the following is a "
          f"series of {f} frames sampled at {fps:.1f} FPS.\n")
  return head + "".join(f"[{_mmss_frac(t)}]:<image>\n" for t in timestamps)


def decode_video(path: str, target_fps: float, max_frames: int = MAX_FRAMES
                 ) -> tuple[list[Image.Image], list[float], float]:
  """Decodes the sampled frames of a video file with PyAV.

  Returns:
    ``(frames as RGB PIL images, timestamps [s], duration [s])``.
  Raises:
    BadSample("missing_file" | "corrupt_file"): no file / undecodable / no
      video stream / no frames.
  """
  import av  # pylint: disable=import-outside-toplevel
  remote = paths.is_url(path)
  if not (paths.exists(path) if remote else os.path.exists(path)):
    raise BadSample("missing_file", path)
  try:
    # An object is streamed through a seekable file object (gcsfs), not downloaded.
    source = paths.resolve(path).open("rb") if remote else path
    with av.open(source) as container:
      if not container.streams.video:
        raise BadSample("corrupt_file", f"{path}: no video stream")
      stream = container.streams.video[0]
      rate = stream.average_rate or stream.guessed_rate or stream.base_rate
      native_fps = float(rate) if rate else 25.0
      frames = [fr.to_image() for fr in container.decode(stream)]
  except BadSample:
    raise
  except Exception as e:  # av.error.* and friends
    raise BadSample("corrupt_file", f"{path}: {type(e).__name__}: {e}") from e
  if not frames:
    raise BadSample("corrupt_file", f"{path}: no frames")
  idx = sample_frame_indices(len(frames), native_fps, target_fps, max_frames)
  return ([images_lib.to_rgb(frames[i]) for i in idx], [i / native_fps for i in idx],
          len(frames) / native_fps)


def frame_list_video(frames: Sequence[Any], fps: float, target_fps: float, max_frames: int = MAX_FRAMES,
                     max_image_pixels: int = images_lib.DEFAULT_MAX_IMAGE_PIXELS
                     ) -> tuple[list[Image.Image], list[float], float]:
  """A list of frame images (paths, bytes, arrays) at ``fps`` treated as a video.

  Returns / raises: as ``decode_video`` (and ``images.open_image``).
  """
  if not frames:
    raise BadSample("corrupt_file", "empty frame list")
  idx = sample_frame_indices(len(frames), fps, target_fps, max_frames)
  return ([images_lib.open_image(frames[i], max_image_pixels) for i in idx], [i / fps for i in idx],
          len(frames) / fps)


def per_frame_max_pixels(video_max_pixels: int, frame_min_pixels: int, num_frames: int) -> int:
  """Frames of one video share its pixel budget: ``max(total // f, frame_min)``."""
  return max(video_max_pixels // max(num_frames, 1), frame_min_pixels)
