"""Fitting samples to a run's limits (data/fitting.py, processor): fewer frames, then fewer
pixels, never a skip at the released settings.

The planner is checked against an exhaustive search with the independent
``ref_smart_resize``; the processor on real media (a PyAV-encoded H.264 clip, JPEG
photos) against the limits of every released recipe stage.
"""

import functools
import json

import av
import ml_collections
import numpy as np
import pytest
from PIL import Image

from testlib import data as ref
from neo_jax.data import fitting
from neo_jax.data import pipeline
from neo_jax.data import processor as processor_lib
from neo_jax.data import video as video_lib
from neo_jax.data.errors import BadSample
from neo_jax.core import tokens

RECIPES = [f"{m}:stage{s}" for m in ("neo_2b", "neo_9b", "neo_ov_2b", "neo_ov_9b")
           for s in (1, 2, 3)]


def _ref_tokens(size, lo, hi):
  h, w = ref.ref_smart_resize(size[0], size[1], lo, hi)
  return (h // 32) * (w // 32)


@pytest.mark.parametrize("seed", range(6))
def test_image_budget_is_the_largest_that_fits(seed):
  rng = np.random.default_rng(seed)
  sizes = [tuple(int(x) for x in rng.integers(40, 3000, 2)) for _ in range(rng.integers(1, 5))]
  text, lo, budget = int(rng.integers(10, 200)), 4096, 1 << 22
  limits = fitting.Limits(max_tokens=int(rng.integers(300, 3000)))
  total = lambda b: text + sum(_ref_tokens(s, lo, b) for s in sizes)
  got = fitting.fit_image_budget(sizes, text, lo, budget, limits)
  if total(lo) > limits.max_tokens:
    assert got is None
    return
  assert got is not None and total(got) <= limits.max_tokens
  if got < budget:  # no budget above it fits (exhaustive over the grid-changing budgets)
    probe = np.unique(np.linspace(got + 1, budget, 400).astype(int))
    assert all(total(int(b)) > limits.max_tokens for b in probe)


def test_video_plan_frames_first_then_pixels():
  per_line = 12   # tokens of one "[MM:SS.ss]:<img></img>\n" line, say
  text = lambda n: 50 + per_line * n
  size, lo, budget = (720, 1280), 4096, 131072
  frame = _ref_tokens(size, lo, budget)
  # Fits as configured.
  p = fitting.fit_video(size, 64, text, lo, budget, fitting.Limits(50 + 64 * (per_line + frame)))
  assert (p.num_frames, p.frame_max_pixels, p.fitted) == (64, budget, "")
  # Fewer frames at the same resolution: the largest n that fits.
  cap = 50 + 40 * (per_line + frame) + 5
  p = fitting.fit_video(size, 64, text, lo, budget, fitting.Limits(cap))
  assert (p.num_frames, p.frame_max_pixels, p.fitted) == (40, budget, fitting.FITTED_FRAMES)
  # Below 8 frames' worth: 8 frames with fewer pixels each.
  cap = 50 + 8 * per_line + 8 * 60
  p = fitting.fit_video(size, 64, text, lo, budget, fitting.Limits(cap))
  assert p.num_frames == 8 and p.fitted == fitting.FITTED_PIXELS
  assert 50 + 8 * (per_line + _ref_tokens(size, lo, p.frame_max_pixels)) <= cap
  assert 50 + 8 * (per_line + _ref_tokens(size, lo, p.frame_max_pixels + 2048)) > cap
  # A visual-token cap alone.
  p = fitting.fit_video(size, 64, text, lo, budget, fitting.Limits(0, 20 * frame))
  assert p.num_frames == 20 and p.fitted == fitting.FITTED_FRAMES
  # Nothing fits at the floors.
  assert fitting.fit_video(size, 64, text, lo, budget, fitting.Limits(50 + 8 * per_line)) is None


def _write_clip(path, seconds, fps=4, size=(720, 1280)):
  """A real H.264 clip (PyAV, libx264): a moving gradient, ``seconds`` long."""
  h, w = size
  yy, xx = np.mgrid[0:h, 0:w]
  with av.open(str(path), "w") as c:
    s = c.add_stream("libx264", rate=fps)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    s.codec_context.gop_size = 2 * fps
    s.options = {"preset": "ultrafast", "crf": "35"}
    for i in range(int(seconds * fps)):
      v = ((xx + 7 * i) % 256).astype(np.uint8)
      rgb = np.stack([v, ((yy + 3 * i) % 256).astype(np.uint8), np.full_like(v, i % 256)], -1)
      for p in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)
  return str(path)


def _write_photo(path, w, h):
  yy, xx = np.mgrid[0:h, 0:w]
  rgb = np.stack([(xx % 251), (yy % 241), ((xx + yy) % 256)], -1).astype(np.uint8)
  Image.fromarray(rgb).save(path, quality=80)
  return str(path)


@functools.cache
def _media(root):
  import pathlib
  root = pathlib.Path(root)
  return {"clip": _write_clip(root / "clip60.mp4", 60),
          "photos4": [_write_photo(root / f"p{i}.jpg", 2304, 1728) for i in range(4)],
          "photo16": _write_photo(root / "p16.jpg", 4608, 3456)}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
  return _media(str(tmp_path_factory.mktemp("media")))


def _load(spec):
  from neo_jax import configs  # pylint: disable=import-outside-toplevel
  return configs.get_config(spec)


def _processors(config):
  """One processor per context phase (the shortest phase is the tightest limit)."""
  from neo_jax.core import context_schedule  # pylint: disable=import-outside-toplevel
  return [_processor(config, p.seq_len) for p in context_schedule.phases(config)]


def _processor(config, seq_len):
  m = config.model
  limit = pipeline.sample_limit(seq_len, m.get("max_sample_tokens", 0))
  src = ml_collections.ConfigDict({"options": {}})
  opts = pipeline.source_options(config.data, src, max_tokens=limit,
                                 max_visual_tokens=m.get("max_visual_tokens", 0))
  return processor_lib.SampleProcessor(opts, source="t"), limit


def _conv(q):
  return [{"from": "human", "value": q}, {"from": "gpt", "value": "An answer."}]


@pytest.mark.parametrize("spec", RECIPES)
def test_released_stages_fit_long_video_and_large_photos(spec, media):
  """Every phase of every released stage takes a 60-s 720p clip, four 4-MP photos and a
  16-MP photo as a fitted sample within its limits."""
  config = _load(spec)
  for proc, limit in _processors(config):
    _check_stage(spec, config, proc, limit, media)


def _check_stage(spec, config, proc, limit, media):
  max_vis = config.model.get("max_visual_tokens", 0)
  records = {
      "video": {"video": media["clip"], "conversations": _conv("<video>\nWhat happens?")},
      "4x4MP": {"image": media["photos4"],
                "conversations": _conv("<image>\n<image>\n<image>\n<image>\nCompare them.")},
      "16MP": {"image": media["photo16"], "conversations": _conv("Describe the photo.")},
  }
  for name, rec in records.items():
    out = proc({**rec, "_id": name})
    assert "skip" not in out, (spec, name, out)
    n, vis = len(out["input_ids"]), len(out["pixel_values"])
    assert n <= limit and (not max_vis or vis <= max_vis), (spec, name, n, vis)
    assert vis > 0 and out["source"] == "t"
    assert (out["input_ids"] == tokens.IMG_CONTEXT_TOKEN_ID).sum() == vis
  # The video keeps >= 8 frames, with the exact time of each frame it kept.
  v = proc.process({"video": media["clip"], "conversations": _conv("<video>\nWhat happens?")})
  tok = processor_lib.get_tokenizer(config.data.tokenizer)
  text = tok.decode(v["input_ids"])
  stamps = [s.split("]")[0] for s in text.split("\n[")[1:]]
  o = proc.options
  assert 8 <= len(stamps) <= min(o.max_frames, 60)
  idx = video_lib.sample_frame_indices(240, 4.0, o.video_fps, len(stamps))
  want = [f"{int(i / 4 // 60):02d}:{i / 4 % 60:05.2f}" for i in idx]
  assert stamps == want


def test_fitted_counts_reach_the_pipeline_stats(tmp_path, media):
  recs = [{"video": media["clip"], "conversations": _conv("<video>\nWhat happens?")},
          {"image": media["photo16"], "conversations": _conv("Describe.")}]
  ann = tmp_path / "a.jsonl"
  ann.write_text("".join(json.dumps(r) + "\n" for r in recs))
  c = pipeline.default_data_config()
  c.sources = ml_collections.ConfigDict({"mix": {"kind": "json", "path": str(ann), "weight": 1.0,
                                                 "data_root": "", "options": {
                                                     "max_pixels": 16777216,
                                                     "video_max_pixels": 16777216}}})
  c.shuffle = False
  it = pipeline.make_train_iterator(c, seq_len=4096, batch_size=1, seed=0)
  for _ in range(2):
    b = next(it)
    assert (b["segment_ids"] > 0).sum() <= 4096
  st = it.stats()
  # Both records need fitting at 4096 tokens: the video by frames, the photo by pixels.
  kept = st["source/mix/kept"]
  assert st["fit/frames"] >= 1 and st["fit/pixels"] >= 1 and kept >= 2
  assert st["fit/frames"] + st["fit/pixels"] == kept == st["source/mix/fit/frames"] + st[
      "source/mix/fit/pixels"]
  assert not pipeline.skip_counts(it)


def test_text_that_cannot_fit_is_still_a_skip():
  proc = processor_lib.SampleProcessor(processor_lib.ProcessOptions(max_tokens=20), source="s")
  out = proc({"_id": "s:0", "conversations": _conv("word " * 50)})
  assert out["skip"] == "too_long" and out["source"] == "s"
  with pytest.raises(BadSample, match="too_long"):
    proc.process({"conversations": _conv("word " * 50)})


@pytest.mark.slow
def test_ten_minute_clip_fits_every_stage(tmp_path):
  clip = _write_clip(tmp_path / "clip600.mp4", 600, fps=2)
  for spec in RECIPES:
    for proc, limit in _processors(_load(spec)):
      out = proc({"video": clip, "conversations": _conv("<video>\nSummarise."), "_id": spec})
      assert "skip" not in out and len(out["input_ids"]) <= limit, (spec, out.get("skip"))
