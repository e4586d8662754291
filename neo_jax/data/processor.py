"""One annotation record -> one per-sample dict (before packing).

Record format (the release's JSON / JSONL annotations, docs/design.md §3.3):
``{"image": path | [paths], "images": [...], "video": path | [frame paths]
| {"frames": [...], "fps": float}, "conversations": [{"from", "value"}],
"data_path": root for relative paths}``. Image entries may also be bytes,
``PIL.Image`` or uint8 arrays (TFDS / ArrayRecord sources). ``"_id"`` names the
record in logs and errors.

Per-sample output (``process`` / ``__call__``)::

  input_ids    [n] int32
  labels       [n] int32      aligned, -100 = ignored
  token_hw     [n, 2] int32   (row, col) of each <IMG_CONTEXT>, 0 elsewhere
  pixel_values [m, 4, 768] uint8, m = number of <IMG_CONTEXT> tokens, in order
  num_supervised  int         positions i with labels[i + 1] != -100
  record_id    str
  skipped_turns   int         turns left out for an unknown role (only when > 0)

A bad record becomes ``{"skip": reason, "record_id": ..., "detail": ...}`` so
that skips cross worker processes and are counted by the packer; with
``strict=True`` it raises instead.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np

from neo_jax.core import geometry, paths
from neo_jax.data import conversation as conv_lib
from neo_jax.data import fitting
from neo_jax.data import images as images_lib
from neo_jax.data import video as video_lib
from neo_jax.data.errors import BadSample
from neo_jax.data.tokenizer import get_tokenizer
from neo_jax.core.tokens import IGNORE_INDEX

log = logging.getLogger(__name__)


class BadRecordError(RuntimeError):
  """Strict mode: a bad record; the message names the record and the reason."""


@dataclasses.dataclass(frozen=True)
class ProcessOptions:
  """Per-source processing options (units: pixels, frames, frames/s).

  min_pixels / max_pixels: smart_resize bounds of one image (docs/design.md §3.2);
    n images share ``per_image_max_pixels``.
  max_image_pixels: decoded size above which a file is a decompression bomb.
  video_fps: target sampling rate; max_frames: cap (<= 128).
  video_min_pixels: per-frame minimum; video_max_pixels: per-video budget.
  frame_list_fps: rate of a video given as a frame list without an ``fps``.
  min_frames: the frame floor of fitting a video (``fitting.py``).
  max_tokens / max_visual_tokens: [tokens] what one sample may hold, 0 = no limit;
    set by the training pipeline from ``seq_len`` / ``model.max_sample_tokens`` /
    ``model.max_visual_tokens``: a larger sample is fitted (fewer frames, then
    fewer pixels, ``fitting.py``) or skipped as ``too_long``.
  tokenizer: ``get_tokenizer`` kind.
  strict: raise ``BadRecordError`` instead of returning a skip marker.
  share_pixel_budget: False = every image gets the whole ``max_pixels`` and every
    video frame the whole ``video_max_pixels`` (the release's evaluation,
    ``neo_chat.py``: ``load_image_native`` per image / frame) instead of sharing them.
  frame_cap_rule: how a capped video sample is spread (``video.CAP_RULES``).
  composite_rgba: RGBA images as the release's evaluation loads them
    (``images.release_eval_rgb``) instead of dropping alpha.
  """
  min_pixels: int = 65536
  max_pixels: int = 4194304
  max_image_pixels: int = images_lib.DEFAULT_MAX_IMAGE_PIXELS
  video_fps: float = 1.0
  max_frames: int = 64
  video_min_pixels: int = 4096
  video_max_pixels: int = 4194304
  frame_list_fps: float = 1.0
  min_frames: int = fitting.DEFAULT_MIN_FRAMES
  max_tokens: int = 0
  max_visual_tokens: int = 0
  tokenizer: str = "embedded"
  strict: bool = False
  share_pixel_budget: bool = True
  frame_cap_rule: str = "span"
  composite_rgba: bool = False

  @property
  def limits(self) -> fitting.Limits:
    return fitting.Limits(self.max_tokens, self.max_visual_tokens)


# ProcessOptions fields a run sets itself (not per-source processing choices).
RUN_FIELDS = ("max_tokens", "max_visual_tokens", "tokenizer", "strict")


def _resolve(src: Any, root: str | None) -> Any:
  """A media path relative to ``root`` (a folder or a ``gs://`` prefix) made whole."""
  if isinstance(src, str) and root and not (os.path.isabs(src) or paths.is_url(src)):
    return paths.join(root, src)
  return src


def _as_list(x: Any) -> list:
  if x is None:
    return []
  return list(x) if isinstance(x, (list, tuple)) else [x]


def image_sources(record: dict) -> list:
  """A release-format record's images in order: its ``image`` then its ``images`` (each a
  path / source or a list of them; absent = none)."""
  return _as_list(record.get("image")) + _as_list(record.get("images"))


@dataclasses.dataclass(frozen=True)
class SampleProcessor:
  """Callable record -> per-sample dict (see module docstring); picklable.

  ``source`` names the data source in every output (``"source"``), for per-source
  counts (``source_stats.py``).
  """
  options: ProcessOptions = ProcessOptions()
  source: str = ""

  def __call__(self, record: dict) -> dict:
    rid = str(record.get("_id", "?")) if isinstance(record, dict) else "?"
    try:
      out = self.process(record)
    except BadSample as e:
      if self.options.strict:
        raise BadRecordError(f"record {rid}: {e}") from e
      log.debug("Skipping record %s: %s", rid, e)  # Counted + logged by the packer.
      return {"skip": e.reason, "record_id": rid, "detail": e.detail, "source": self.source}
    out["source"] = self.source
    return out

  def process(self, record: dict, prompt_only: bool = False) -> dict:
    """Like ``__call__`` but raises ``BadSample`` for a bad record.

    With ``prompt_only`` the sample ends after the last assistant header
    (the generation prompt; labels all -100) and the result also holds
    ``"answer"``: the text of that last assistant turn.
    """
    o = self.options
    tok = get_tokenizer(o.tokenizer)
    if not isinstance(record, dict):
      raise BadSample("bad_record", f"record of type {type(record).__name__}")
    if "_error" in record:          # the source could not read it (bad JSON, bad row)
      reason, detail = record["_error"]
      raise BadSample(reason, detail)
    if "_raw" in record:            # valid JSON that is not an object
      raise BadSample("bad_record", f"record of type {type(record['_raw']).__name__}")
    root = record.get("data_path")
    turns = conv_lib.normalize_turns(record.get("conversations"))
    image_srcs = image_sources(record)
    video = record.get("video")
    if video is not None:
      if image_srcs:
        raise BadSample("bad_record", "both images and a video")
      turns, pixels, grids, fitted = self._video(video, root, turns, tok, prompt_only)
    else:
      turns = conv_lib.add_default_image_tag(turns, len(image_srcs))
      n_tags = sum(v.count(conv_lib.IMAGE_TAG) for _, v in turns)
      if n_tags != len(image_srcs):  # Fail before decoding anything.
        raise BadSample("image_tag_mismatch", f"{n_tags} <image> tags for {len(image_srcs)} images")
      pixels, grids, fitted = self._images(image_srcs, root, turns, tok, prompt_only)
    ids, labels = conv_lib.tokenize_turns(turns, tok, [r * c for r, c in grids], prompt_only)
    num_sup = int(np.count_nonzero(labels[1:] != IGNORE_INDEX))
    if prompt_only:
      labels[:] = IGNORE_INDEX
    elif num_sup == 0:
      raise BadSample("no_supervised_token", "no label after the first token")
    token_hw = np.zeros((len(ids), 2), np.int32)
    ctx = np.flatnonzero(ids == tok.img_context_id)
    if grids:
      token_hw[ctx] = np.concatenate([images_lib.token_grid_hw(r, c) for r, c in grids])
      pv = np.concatenate(pixels)
    else:
      pv = np.zeros((0,) + geometry.token_pixels_shape(), np.uint8)
    if len(ctx) != len(pv):  # The text itself contained <IMG_CONTEXT>.
      raise BadSample("image_tag_mismatch", f"{len(ctx)} <IMG_CONTEXT> ids for {len(pv)} visual tokens")
    if not o.limits.fits(len(ids), len(pv)):  # the plan is checked on the real tokens
      raise BadSample("too_long", f"{len(ids)} tokens ({len(pv)} visual) > "
                      f"{o.limits.describe()} after fitting")
    out = {"input_ids": ids, "labels": labels, "token_hw": token_hw, "pixel_values": pv,
           "num_supervised": num_sup, "record_id": str(record.get("_id", "?"))}
    if fitted:
      out["fitted"] = fitted
    if conv_lib.unknown_turns(turns):  # turns left out for their role, as the release does
      out["skipped_turns"] = conv_lib.unknown_turns(turns)
    if prompt_only:
      out["num_supervised"] = 0
      out["answer"] = [v for r, v in turns if r == "assistant"][-1]
    return out

  def _text_tokens(self, turns, tok, num_images: int, prompt_only: bool) -> int:
    """[tokens] of the sample with ``num_images`` empty image blocks."""
    return len(conv_lib.tokenize_turns(turns, tok, [0] * num_images, prompt_only)[0])

  def _images(self, srcs: list, root: str | None, turns, tok, prompt_only: bool):
    """``(pixels, grids, fitted)`` of a sample's images, fitted to the limits."""
    o = self.options
    budget = (images_lib.per_image_max_pixels(o.max_pixels, o.min_pixels, len(srcs))
              if o.share_pixel_budget else o.max_pixels)
    probed = [images_lib.probe_image(_resolve(s, root), o.max_image_pixels) for s in srcs]
    fitted = ""
    if probed and o.limits.active:
      text = self._text_tokens(turns, tok, len(srcs), prompt_only)
      sizes = [(img.size[1], img.size[0]) for img, _ in probed]
      fit = fitting.fit_image_budget(sizes, text, o.min_pixels, budget, o.limits)
      if fit is None:
        vis = sum(fitting.grid_tokens(sz, o.min_pixels, o.min_pixels) for sz in sizes)
        raise BadSample("too_long", f"{text} text + {vis} visual tokens at min_pixels="
                        f"{o.min_pixels} exceed {o.limits.describe()}")
      if fit < budget:
        budget, fitted = fit, fitting.FITTED_PIXELS
    pixels, grids = [], []
    for img, name in probed:
      px, grid = images_lib.native_tokens(images_lib.load_image(img, name, o.composite_rgba),
                                          o.min_pixels, budget)
      pixels.append(px)
      grids.append(grid)
    return pixels, grids, fitted

  def _video(self, video: Any, root: str | None, turns, tok, prompt_only: bool):
    """``(turns with the video text, pixels, grids, fitted)`` of a video sample: frames
    planned (``fitting.fit_video``) before any is decoded, each resized as decoded."""
    o = self.options
    chosen: dict[str, Any] = {}

    def plan(info: video_lib.VideoInfo) -> int:
      budget = (video_lib.per_frame_max_pixels(o.video_max_pixels, o.video_min_pixels, info.sampled)
                if o.share_pixel_budget else o.video_max_pixels)
      chosen["budget"] = budget
      if not o.limits.active or not info.height or not info.width:
        return info.sampled

      def text_tokens(n: int) -> int:
        stamps = [i / info.fps for i in video_lib.sample_frame_indices(
            info.num_frames, info.fps, o.video_fps, n, o.frame_cap_rule)]
        return self._text_tokens(_insert_video(turns, video_lib.video_prompt(info.duration, stamps)),
                                 tok, n, prompt_only)

      p = fitting.fit_video((info.height, info.width), info.sampled, text_tokens,
                            o.video_min_pixels, budget, o.limits, o.min_frames)
      if p is None:
        floor = max(1, min(o.min_frames, info.sampled))
        raise BadSample("too_long", f"video of {info.duration:.0f} s does not fit "
                        f"{o.limits.describe()} even at {floor} frames of "
                        f"{o.video_min_pixels} pixels")
      chosen.update(budget=p.frame_max_pixels, fitted=p.fitted)
      return p.num_frames

    def convert(frame):
      return images_lib.native_tokens(frame, o.video_min_pixels, chosen["budget"])

    if isinstance(video, (dict, list, tuple)):
      frames = video.get("frames", []) if isinstance(video, dict) else video
      fps = float(video.get("fps", o.frame_list_fps)) if isinstance(video, dict) else o.frame_list_fps
      out, stamps, duration = video_lib.frame_list_video(
          [_resolve(f, root) for f in frames], fps, o.video_fps, o.max_frames, o.max_image_pixels,
          plan=plan, convert=convert, cap_rule=o.frame_cap_rule)
    else:
      out, stamps, duration = video_lib.decode_video(_resolve(video, root), o.video_fps,
                                                     o.max_frames, plan=plan, convert=convert,
                                                     cap_rule=o.frame_cap_rule)
    turns = _insert_video(turns, video_lib.video_prompt(duration, stamps))
    return turns, [px for px, _ in out], [g for _, g in out], chosen.get("fitted", "")


def _insert_video(turns: list[tuple[str, str]], text: str) -> list[tuple[str, str]]:
  """Puts the video text at the ``<video>`` tag, else before the first user turn's text."""
  out = list(turns)
  for i, (role, val) in enumerate(out):
    if conv_lib.VIDEO_TAG in val:
      out[i] = (role, val.replace(conv_lib.VIDEO_TAG + "\n", text, 1).replace(conv_lib.VIDEO_TAG, text, 1))
      return out
  for i, (role, val) in enumerate(out):
    if role == "user":
      out[i] = (role, text + val)
      return out
  raise BadSample("bad_record", "video without a user turn")
