"""Named presets: the release's evaluation preprocessing and generation settings.

``--preset neo`` / ``--preset neo_ov`` (``neo_jax.evaluate``, ``neo_jax.infer``, the
lmms-eval model's ``preset=``) select everything the authors' VLMEvalKit models set:

* ``neo`` (VLMEvalKit/vlmeval/config.py ``NEO-2B-SFT`` / ``NEO-9B-SFT``, neo/neo_chat.py):
  images of 1280..4096 tokens of 32 x 32 pixels, each image its own full budget
  (``load_image_native`` per image), RGBA pasted on white; greedy; 4096 new tokens;
  no system message; the NEO prompts.
* ``neo_ov`` (VLMEvalKit_ov/vlmeval/config.py ``NEOov-*-image`` / ``-video``,
  neo/neo_chat.py): images of 1280..16384 tokens; video frames of 4..225 tokens
  (360 x 640 = 230,400 pixels each, not shared), 1 frame/s up to 256 frames, spread
  as its Video-MME loader does when capped; sampling at temperature 0.6, top-p 0.95,
  top-k 20, repetition penalty 1.05; 16384 new tokens; the system message
  "Reason step by step."; the NEO-ov prompts.

Precedence: the flags a user sets > the preset (and its per-dataset rules) > the
processing the checkpoint was trained with (``processing.json``) > the library
defaults. ``describe`` writes the log line that says which applied.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from neo_jax.eval import prompts

TOKEN = 32 * 32      # [pixels] of one visual token (patch 16 x downsample 2, squared)


@dataclasses.dataclass(frozen=True)
class Preset:
  """One release's evaluation settings.

  processing: ``ProcessOptions`` fields. sampling: ``SamplingConfig`` fields.
  max_new_tokens: [tokens]. system: the system message ("" = none).
  style: ``prompts.STYLES``.
  """
  name: str
  processing: dict[str, Any]
  sampling: dict[str, Any]
  max_new_tokens: int
  system: str
  style: str


PRESETS = {
    "neo": Preset(
        "neo",
        processing=dict(min_pixels=1280 * TOKEN, max_pixels=4096 * TOKEN,
                        share_pixel_budget=False, composite_rgba=True),
        sampling=dict(temperature=0.0),
        max_new_tokens=4096, system=prompts.SYSTEM["neo"], style="neo"),
    "neo_ov": Preset(
        "neo_ov",
        processing=dict(min_pixels=1280 * TOKEN, max_pixels=16384 * TOKEN,
                        video_min_pixels=4 * TOKEN, video_max_pixels=360 * 640,
                        video_fps=1.0, max_frames=256, frame_cap_rule="release_eval",
                        share_pixel_budget=False, composite_rgba=True),
        sampling=dict(temperature=0.6, top_p=0.95, top_k=20, repetition_penalty=1.05),
        max_new_tokens=16384, system=prompts.SYSTEM["neo_ov"], style="neo_ov"),
}


def get(name: str | None) -> Preset | None:
  """The preset called ``name`` (None -> None).

  Raises:
    ValueError: an unknown name (the message lists the presets).
  """
  if name is None or name == "":
    return None
  if name not in PRESETS:
    raise ValueError(f"--preset {name!r} is not one of {', '.join(PRESETS)}.")
  return PRESETS[name]


def dataset_processing(preset: Preset, dataset: str) -> dict[str, Any]:
  """The preset's processing for one benchmark: its per-dataset pixel rules
  (``NEOChat.set_max_num``). NEO: OCRBench images of at least 256 x 256 pixels.
  NEO-ov: MMMU_DEV_VAL 1003520..4014080 pixels, TextVQA_VAL at least 2048 tokens,
  OCRBench at least 512 x 512 pixels, MVBench_32frame frames of 128..2048 tokens."""
  out = dict(preset.processing)
  if preset.name == "neo":
    if "OCRBench" in dataset:
      out["min_pixels"] = 256 * 256
  else:
    if "MVBench_32frame" in dataset:
      out.update(video_min_pixels=128 * TOKEN, video_max_pixels=2048 * TOKEN)
    if "MMMU_DEV_VAL" in dataset:
      out.update(min_pixels=1003520, max_pixels=4014080)
    if "TextVQA_VAL" in dataset:
      out["min_pixels"] = 2048 * TOKEN
    if "OCRBench" in dataset:
      out["min_pixels"] = 512 * 512
  return out


def upscale_first_image(preset: Preset | None, dataset: str) -> bool:
  """Both releases double the first image of an MMMU question (bilinear) before resizing
  (``generate_inner``'s ``upscale_flag``)."""
  return preset is not None and "MMMU" in dataset


def dataset_sampling(preset: Preset, dataset: str) -> tuple[dict[str, Any], int]:
  """``(SamplingConfig fields, max_new_tokens)`` for one benchmark. NEO-ov samples (16384
  tokens) on every dataset but VideoMMMU_256frame, where it decodes greedily with its
  model's default of 4096 tokens (``generate_inner``)."""
  if preset.name == "neo_ov" and "VideoMMMU_256frame" in dataset:
    return dict(temperature=0.0), 4096
  return dict(preset.sampling), preset.max_new_tokens


def combine(trained: dict[str, Any], preset_opts: dict[str, Any] | None,
            explicit: dict[str, Any]) -> dict[str, Any]:
  """Processing options: ``explicit`` over ``preset_opts`` over ``trained``."""
  return {**trained, **(preset_opts or {}), **explicit}


def describe(preset: Preset | None, dataset: str, explicit: dict[str, Any]) -> str:
  """One log line: which preset applies (its processing and sampling) and which of its
  settings the user's flags override."""
  if preset is None:
    return "preset: none (the checkpoint's trained processing, greedy)"
  opts = dataset_processing(preset, dataset) if dataset else dict(preset.processing)
  samp, n = dataset_sampling(preset, dataset)
  over = sorted(k for k in explicit if k in opts or k in samp or k == "max_new_tokens")
  line = (f"preset {preset.name} (over the trained processing): "
          + ", ".join(f"{k}={v}" for k, v in sorted(opts.items()))
          + "; sampling " + ", ".join(f"{k}={v}" for k, v in sorted(samp.items()))
          + f"; max_new_tokens={n}; system={preset.system!r}; prompts {preset.style}")
  if over:
    line += "; the flags override " + ", ".join(f"{k}={explicit[k]}" for k in over)
  return line
