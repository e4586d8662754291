"""Video: frame sampling, PyAV decoding and the timestamped prompt (docs/design.md §3.4).

A video becomes f frames (each its own image unit) preceded by the global
prefix line and, per frame, ``[MM:SS.ss]:<image>\\n``; the ``<image>`` tags
are expanded like any image. A list of frame images (paths / arrays) with an
fps is accepted as a video too.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

from PIL import Image

from neo_jax.core import paths
from neo_jax.data.errors import BadSample
from neo_jax.data import images as images_lib

MAX_FRAMES = 128


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """A timed video, before any frame is decoded (what a ``plan`` callback sees).

  num_frames: frames in the video; fps: [frames/s]; duration: [s];
  height / width: [pixels] of a frame (0 when unknown);
  sampled: frames the configured rate and cap would sample.
  """
  num_frames: int
  fps: float
  duration: float
  height: int
  width: int
  sampled: int


# plan(info) -> frames to sample (<= info.sampled); convert(RGB frame) -> what is kept.
Plan = Callable[[VideoInfo], int]
Convert = Callable[[Image.Image], Any]


# How a capped sample is spread (``sample_frame_indices``): "span", ``num_frames / n``
# (the n frames cover the whole clip), or "release_eval", ``num_frames / (n + 1)`` (the
# release's NEO-ov evaluation, VLMEvalKit_ov/vlmeval/dataset/videomme.py:233).
CAP_RULES = ("span", "release_eval")


def sample_frame_indices(num_frames: int, native_fps: float, target_fps: float,
                         max_frames: int = MAX_FRAMES, cap_rule: str = "span") -> list[int]:
  """Frame indices sampled uniformly at ``target_fps``, at most ``max_frames``.

  ``n = int(duration * target_fps)`` frames at step ``native_fps / target_fps``
  (the release's Video-MME loader); if that exceeds ``max_frames`` (or the
  frame count) ``n`` is capped and the step becomes ``num_frames / n``
  (``cap_rule="span"``) or ``num_frames / (n + 1)`` (``"release_eval"``), from
  frame 0. At least one frame.

  Args:
    num_frames: frames in the video (> 0); native_fps: [frames/s] of the file;
    target_fps: [frames/s] wanted; max_frames: cap (128 in NEO-ov training, 256
    in its evaluation); cap_rule: one of ``CAP_RULES``.
  Returns:
    increasing frame indices in ``[0, num_frames)``.
  Raises:
    ValueError: non-positive counts or rates, an unknown ``cap_rule``.
  """
  if num_frames <= 0 or native_fps <= 0 or target_fps <= 0 or max_frames <= 0:
    raise ValueError(f"bad video sampling args {num_frames=} {native_fps=} {target_fps=} {max_frames=}")
  if cap_rule not in CAP_RULES:
    raise ValueError(f"cap_rule {cap_rule!r} is not one of {CAP_RULES}")
  n_fps = int(num_frames / native_fps * target_fps)
  n = max(1, min(n_fps, max_frames, num_frames))
  step = (native_fps / target_fps if n == n_fps else
          num_frames / n if cap_rule == "span" else num_frames / (n + 1))
  return [min(int(i * step), num_frames - 1) for i in range(n)]


def _mmss(seconds: float) -> str:
  return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"


def _mmss_frac(seconds: float) -> str:
  return f"{int(seconds // 60):02d}:{seconds % 60:05.2f}"


def video_prompt(duration: float, timestamps: Sequence[float]) -> str:
  """The NEO-ov video text with one ``<image>`` tag per frame (docs/design.md §3.4).

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


# Until two keyframes have been decoded (their spacing is the group of pictures), a
# target further ahead than this is reached by seeking, a nearer one by decoding forward.
SEEK_GAP_S = 1.0


def _stream_timing(container, stream) -> tuple[float, float, float | None, int]:
  """``(fps, start [s], duration [s] or None, frame count or 0)`` from the headers."""
  rate = stream.average_rate or stream.guessed_rate or stream.base_rate
  fps = float(rate) if rate else 0.0
  tb = float(stream.time_base) if stream.time_base else 0.0
  start = stream.start_time * tb if stream.start_time is not None and tb else 0.0
  if stream.duration and tb:
    duration = stream.duration * tb
  elif container.duration:
    duration = container.duration / 1_000_000  # AV_TIME_BASE units
  else:
    duration = None
  return fps, start, duration, int(stream.frames or 0)


def _packet_times(container, stream) -> tuple[int, list[float]]:
  """``(packets, presentation times [s] of those that have one)`` of the video stream,
  read without decoding (for files whose headers give no duration, e.g. raw H.264,
  whose packets carry no times at all). Consumes the container."""
  tb = float(stream.time_base)
  count, times = 0, []
  for p in container.demux(stream):
    if p.size:  # the demuxer's final empty packet is not a frame
      count += 1
      if p.pts is not None:
        times.append(p.pts * tb)
  return count, sorted(times)


def _sampled_frames(container, stream, targets: Sequence[float], start: float,
                    half_frame: float, seekable: bool = True,
                    keep: Callable[[Any], Any] = lambda f: f) -> list[tuple[float, Any]]:
  """Decodes the frame at or just after each target time [s from the stream start].

  Seeks (to the keyframe at or before the target) when the target lies past the
  current group of pictures (the last keyframe's time + the smallest keyframe
  spacing seen so far; ``SEEK_GAP_S`` past the last frame until a spacing is
  seen), else decodes forward (always, when not ``seekable``): a seek then skips
  whole groups and never re-decodes the current one. Only the chosen frames are
  kept, each as ``keep(av.VideoFrame)`` (converted as soon as it is decoded, so the
  decoder's native-size frames are not held). Returns ``[(time [s], kept frame)]``;
  fewer than ``targets`` when the stream ends early.
  """
  tb = float(stream.time_base)
  out: list[tuple[float, Any]] = []
  frames = None
  last, decoded = -float("inf"), 0
  key_t, gop = None, None  # latest keyframe time [s], smallest keyframe spacing [s]
  for target in targets:
    if out and out[-1][0] >= target - half_frame:
      continue  # the frame already taken covers this target
    if frames is None and not seekable:
      frames = container.decode(stream)
    elif seekable and (frames is None or (gop is None and target - last > SEEK_GAP_S)
                       or (gop is not None and key_t is not None
                           and target >= key_t + gop - half_frame)):
      container.seek(max(int((target + start) / tb), 0), stream=stream, backward=True,
                     any_frame=False)
      frames = container.decode(stream)
      key_t = None  # the next keyframe is where the seek landed, not a spacing
    for frame in frames:
      # Frames without a time (raw streams, decoded from the start) count at the rate.
      t = frame.pts * tb - start if frame.pts is not None else decoded * 2 * half_frame
      last, decoded = t, decoded + 1
      if frame.key_frame:
        if key_t is not None and t > key_t:
          gop = t - key_t if gop is None else min(gop, t - key_t)
        key_t = t
      if t >= target - half_frame:
        out.append((t, keep(frame)))
        break
    else:
      break  # end of stream
  return out


def decode_video(path: str, target_fps: float, max_frames: int = MAX_FRAMES,
                 plan: Plan | None = None, convert: Convert | None = None,
                 cap_rule: str = "span") -> tuple[list[Any], list[float], float]:
  """Decodes only the sampled frames of a video file with PyAV.

  The frame count ``round(duration * fps)`` (or the header's) and
  ``sample_frame_indices`` give target times ``index / fps``; each is decoded by
  seeking to the keyframe before it (or decoding forward when it is near), so
  memory holds one group of pictures and the chosen frames, not the video.
  Files without a duration or frame rate in their headers (raw streams) are
  timed from their packets' presentation times first. Timestamps are the
  decoded frames' own presentation times (exact under a variable frame rate),
  relative to the stream's start.

  Args:
    path: a local path or URL; target_fps: [frames/s]; max_frames: cap.
    plan: called once the video is timed and before any frame is decoded, with
      its ``VideoInfo``; returns how many frames to sample (<= ``info.sampled``),
      again uniformly over the whole clip (``sample_frame_indices`` with that cap).
    convert: applied to each decoded RGB frame at once (e.g. resize + patchify);
      its results are returned instead of the frames.
    cap_rule: how a capped sample is spread (``sample_frame_indices``).
  Returns:
    ``(frames (RGB PIL images, or what convert returned), timestamps [s],
    duration [s])``.
  Raises:
    BadSample("missing_file" | "corrupt_file"): no file / undecodable / no
      video stream / no frames.
  """
  import av  # pylint: disable=import-outside-toplevel
  remote = paths.is_url(path)
  if not (paths.exists(path) if remote else os.path.exists(path)):
    raise BadSample("missing_file", path)
  # An object is streamed through a seekable file object (gcsfs), not downloaded.
  open_source = lambda: paths.resolve(path).open("rb") if remote else path

  def sample(container, count, fps, start, duration, seekable):
    count = count or max(1, round(duration * fps))
    idx = sample_frame_indices(count, fps, target_fps, max_frames, cap_rule)
    stream = container.streams.video[0]
    if plan is not None:
      ctx = stream.codec_context
      n = plan(VideoInfo(count, fps, duration, int(ctx.height or 0), int(ctx.width or 0), len(idx)))
      if n < len(idx):
        idx = sample_frame_indices(count, fps, target_fps, n, cap_rule)
    to_rgb = lambda fr: images_lib.to_rgb(fr.to_image())
    keep = to_rgb if convert is None else (lambda fr: convert(to_rgb(fr)))
    chosen = _sampled_frames(container, stream, [i / fps for i in idx], start, 0.5 / fps,
                             seekable, keep)
    return [fr for _, fr in chosen], [max(t, 0.0) for t, _ in chosen]

  frames = None
  try:
    with av.open(open_source()) as container:
      if not container.streams.video:
        raise BadSample("corrupt_file", f"{path}: no video stream")
      stream = container.streams.video[0]
      fps, start, duration, count = _stream_timing(container, stream)
      if duration and fps:  # the headers time it: sample from this same container
        frames, timestamps = sample(container, count, fps, start, duration, True)
      else:  # a raw stream: time it from its packets, then decode forward once
        count, times = _packet_times(container, stream)
        if not count:
          raise BadSample("corrupt_file", f"{path}: no frames")
        if len(times) > 1 and times[-1] > times[0]:  # mean packet spacing
          start, fps = times[0], (len(times) - 1) / (times[-1] - times[0])
        else:  # no times: the codec's frame rate (raw H.264: from its SPS)
          rate = stream.guessed_rate or stream.average_rate
          start, fps = 0.0, float(rate) if rate else 25.0
        duration = count / fps
    if frames is None:  # the packet scan consumed the first container
      with av.open(open_source()) as container:
        frames, timestamps = sample(container, count, fps, start, duration, False)
  except BadSample:
    raise
  except Exception as e:  # av.error.* and friends
    raise BadSample("corrupt_file", f"{path}: {type(e).__name__}: {e}") from e
  if not frames:
    raise BadSample("corrupt_file", f"{path}: no frames")
  return frames, timestamps, duration


def frame_list_video(frames: Sequence[Any], fps: float, target_fps: float, max_frames: int = MAX_FRAMES,
                     max_image_pixels: int = images_lib.DEFAULT_MAX_IMAGE_PIXELS,
                     plan: Plan | None = None, convert: Convert | None = None,
                     cap_rule: str = "span") -> tuple[list[Any], list[float], float]:
  """A list of frame images (paths, bytes, arrays) at ``fps`` treated as a video.

  ``plan`` sees the size of the first frame (read from its header).
  Returns / raises: as ``decode_video`` (and ``images.open_image``).
  """
  if not frames:
    raise BadSample("corrupt_file", "empty frame list")
  duration = len(frames) / fps
  idx = sample_frame_indices(len(frames), fps, target_fps, max_frames, cap_rule)
  if plan is not None:
    first, _ = images_lib.probe_image(frames[idx[0]], max_image_pixels)
    n = plan(VideoInfo(len(frames), fps, duration, first.size[1], first.size[0], len(idx)))
    if n < len(idx):
      idx = sample_frame_indices(len(frames), fps, target_fps, n, cap_rule)
  convert = convert or (lambda img: img)
  return ([convert(images_lib.open_image(frames[i], max_image_pixels)) for i in idx],
          [i / fps for i in idx], duration)


def per_frame_max_pixels(video_max_pixels: int, frame_min_pixels: int, num_frames: int) -> int:
  """Frames of one video share its pixel budget: ``max(total // f, frame_min)``."""
  return max(video_max_pixels // max(num_frames, 1), frame_min_pixels)
