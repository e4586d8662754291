"""The release's evaluation preprocessing through our processor (``--preset``).

* Images: every image of a record gets the whole ``max_pixels`` (``share_pixel_budget``
  off) at the preset's bounds, sizes against the independent ``smart_resize`` reference
  (testlib/data.py); RGBA pasted on white when a pixel is transparent.
* NEO-ov video: frames each capped at 360 x 640 pixels, 1 frame/s up to 256 frames,
  spread over ``num_frames / (n + 1)`` when capped (VLMEvalKit_ov's Video-MME loader).
* With ``NEO_RELEASE_DIR`` (and torch, torchvision, pandas): the release's
  ``load_image_native`` gives the same normalised patches as our processor, image for
  image (sizes, RGBA, palette and grey images, MMMU's doubled first image).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from neo_jax.data import images as images_lib
from neo_jax.data import processor as processor_lib
from neo_jax.data import video as video_lib
from neo_jax.eval import presets
from testlib import data as ref
from testlib import release_eval

SIZES = [(480, 640), (2000, 3000), (33, 1500), (4000, 500), (100, 100), (1080, 1920)]


def _record(paths, text="Describe."):
  return {"image": list(paths), "conversations": [
      {"from": "human", "value": "<image>\n" * len(paths) + text}, {"from": "gpt", "value": ""}]}


def _grids(sample):
  starts = np.flatnonzero(sample["input_ids"] == ref.IMG_START)
  ctx = sample["input_ids"] == ref.CTX
  out = []
  for k, st in enumerate(starts):
    end = starts[k + 1] if k + 1 < len(starts) else len(ctx)
    hw = sample["token_hw"][st:end][ctx[st:end]]
    out.append((int(hw[:, 0].max()) + 1, int(hw[:, 1].max()) + 1))
  return out


def _images(tmp_path, sizes, mode="RGB"):
  rng = np.random.default_rng(0)
  paths = []
  for i, (h, w) in enumerate(sizes):
    arr = rng.integers(0, 256, (h, w, 4 if mode == "RGBA" else 3), dtype=np.uint8)
    p = tmp_path / f"img{i}.png"
    Image.fromarray(arr, mode).save(p)
    paths.append(str(p))
  return paths


@pytest.mark.parametrize("name", ["neo", "neo_ov"])
def test_every_image_gets_the_whole_budget(tmp_path, name):
  opts = presets.get(name).processing
  lo, hi = opts["min_pixels"], opts["max_pixels"]
  paths = _images(tmp_path, SIZES)
  proc = processor_lib.SampleProcessor(processor_lib.ProcessOptions(**opts))
  got = _grids(proc.process(_record(paths), prompt_only=True))
  want = [tuple(x // 32 for x in ref.ref_smart_resize(h, w, lo, hi)) for h, w in SIZES]
  assert got == want
  shared = processor_lib.SampleProcessor(processor_lib.ProcessOptions(
      **dict(opts, share_pixel_budget=True)))
  budget = ref.ref_budget(hi, lo, len(SIZES))
  assert _grids(shared.process(_record(paths), prompt_only=True)) == [
      tuple(x // 32 for x in ref.ref_smart_resize(h, w, lo, budget)) for h, w in SIZES]
  assert budget < hi and got != _grids(shared.process(_record(paths), prompt_only=True))


def test_hand_worked_sizes():
  # 2000 x 3000 under NEO's 4096 tokens: 62.5 -> 62 (half to even), 93.75 -> 94 blocks,
  # 1984 x 3008 > 4194304, so beta = sqrt(6e6 / 4194304) = 1.19604 and the sides are
  # floor(1672.2 / 32) = 52, floor(2508.3 / 32) = 78 blocks.
  assert images_lib.smart_resize(2000, 3000, 32, 1280 * 1024, 4096 * 1024) == (52 * 32, 78 * 32)
  # A 480 x 640 video frame under NEO-ov's 230400-pixel cap: 307200 > 230400, beta =
  # 1.1547, floor(415.7 / 32) = 12, floor(554.3 / 32) = 17 blocks.
  assert images_lib.smart_resize(480, 640, 32, 4096, 360 * 640) == (12 * 32, 17 * 32)


def test_rgba_is_pasted_on_white_only_with_a_transparent_pixel():
  rgb = np.array([[[10, 20, 30], [200, 100, 50]]], np.uint8)
  alpha = np.array([[0, 255]], np.uint8)
  img = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
  got = np.asarray(images_lib.release_eval_rgb(img))
  np.testing.assert_array_equal(got, [[[255, 255, 255], [200, 100, 50]]])
  np.testing.assert_array_equal(np.asarray(images_lib.to_rgb(img)), rgb)   # training: dropped
  half = Image.fromarray(np.dstack([rgb, np.full((1, 2), 128, np.uint8)]), "RGBA")
  np.testing.assert_array_equal(np.asarray(images_lib.release_eval_rgb(half)), rgb)
  clear = Image.fromarray(np.dstack([rgb, np.zeros((1, 2), np.uint8)]), "RGBA")
  np.testing.assert_array_equal(np.asarray(images_lib.release_eval_rgb(clear)), rgb)


def _release_indices(num_frames: int, fps: float, target: float, cap: int) -> list[int]:
  """VLMEvalKit_ov/vlmeval/dataset/videomme.py ``save_video_frames`` (fps mode), restated."""
  required = int(num_frames / fps * target)
  if required <= cap:
    step = fps / target
  else:
    required, step = cap, num_frames / (cap + 1)
  return [int(i * step) for i in range(required)]


@pytest.mark.parametrize("num_frames,fps", [(9000, 30.0), (600, 2.0), (7200, 24.0), (100, 25.0)])
def test_frame_sampling_rule_of_the_release(num_frames, fps):
  got = video_lib.sample_frame_indices(num_frames, fps, 1.0, 256, "release_eval")
  assert got == _release_indices(num_frames, fps, 1.0, 256)
  if int(num_frames / fps) > 256:
    assert got != video_lib.sample_frame_indices(num_frames, fps, 1.0, 256)     # "span"


def test_neo_ov_video_frames_are_each_capped_not_shared(tmp_path):
  """A 300-frame list at 1 frame/s (300 s): 256 frames at the release's indices, each
  resized under the 230400-pixel cap; sharing it would shrink them."""
  rng = np.random.default_rng(1)
  small = []
  for i in range(300):
    p = tmp_path / f"f{i}.png"
    Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(p)
    small.append(str(p))
  opts = presets.get("neo_ov").processing
  proc = processor_lib.SampleProcessor(processor_lib.ProcessOptions(**dict(opts, frame_list_fps=1.0)))
  rec = {"video": small, "conversations": [{"from": "human", "value": "<video>\nWhat?"},
                                           {"from": "gpt", "value": ""}]}
  s = proc.process(rec, prompt_only=True)
  idx = _release_indices(300, 1.0, 1.0, 256)
  # The same as the 256 chosen frames given as images under the video's timestamped text.
  same = processor_lib.SampleProcessor(processor_lib.ProcessOptions(
      min_pixels=opts["video_min_pixels"], max_pixels=opts["video_max_pixels"],
      share_pixel_budget=False))
  want = same.process({"image": [small[i] for i in idx], "conversations": [
      {"from": "human", "value": video_lib.video_prompt(300.0, [float(i) for i in idx]) + "What?"},
      {"from": "gpt", "value": ""}]}, prompt_only=True)
  assert len(_grids(s)) == 256
  np.testing.assert_array_equal(s["input_ids"], want["input_ids"])
  np.testing.assert_array_equal(s["pixel_values"], want["pixel_values"])
  big = []
  for i in range(12):
    p = tmp_path / f"b{i}.png"
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(p)
    big.append(str(p))
  rec["video"] = big
  assert _grids(proc.process(rec, prompt_only=True)) == [(12, 17)] * 12
  shared = processor_lib.SampleProcessor(processor_lib.ProcessOptions(
      **dict(opts, frame_list_fps=1.0, share_pixel_budget=True)))
  per = ref.ref_smart_resize(480, 640, 4096, 360 * 640 // 12)
  assert _grids(shared.process(rec, prompt_only=True)) == [(per[0] // 32, per[1] // 32)] * 12


def _release_patches(utils, path, lo, hi, upscale):
  """The release's ``load_image_native`` -> ``[grid_h * grid_w, 3 * 16 * 16]`` float32."""
  pv, grid = utils["load_image_native"](path, patch_size=16, downsample_ratio=0.5,
                                        min_pixels=lo, max_pixels=hi, upscale=upscale)
  return pv.numpy(), tuple(int(x) for x in grid[0])


def _ours_as_release(sample, grids):
  """Our uint8 visual tokens (2 x 2 patches each) normalised and put in the release's
  patch order (row-major over the 16-pixel patch grid)."""
  px = images_lib.normalize_pixels(sample["pixel_values"])
  out, k = [], 0
  for gh, gw in grids:
    t = px[k:k + gh * gw].reshape(gh, gw, 2, 2, 768)        # row, col, dy, dx, (c y x)
    out.append(t.transpose(0, 2, 1, 3, 4).reshape(gh * 2 * gw * 2, 768))
    k += gh * gw
  return out


@pytest.mark.parametrize("ov", [False, True])
def test_image_pixels_equal_the_release(tmp_path, ov):
  utils = release_eval.neo_utils(ov)
  name = "neo_ov" if ov else "neo"
  opts = dict(presets.get(name).processing)
  lo, hi = 4096, 65536                       # small bounds keep the test quick
  opts.update(min_pixels=lo, max_pixels=hi)
  paths = _images(tmp_path, [(120, 90), (300, 500), (64, 700)])
  rgba = np.random.default_rng(2).integers(0, 256, (80, 100, 4), dtype=np.uint8)
  rgba[:20, :, 3] = 0                        # a transparent band: pasted on white
  Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
  Image.fromarray(rgba[..., 0], "L").save(tmp_path / "grey.png")
  Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "pal.png")
  paths += [str(tmp_path / n) for n in ("rgba.png", "grey.png", "pal.png")]
  proc = processor_lib.SampleProcessor(processor_lib.ProcessOptions(**opts))
  for upscale in (False, True):
    srcs = list(paths)
    if upscale:                              # MMMU: the evaluation doubles the first image
      first = images_lib.release_eval_rgb(Image.open(paths[0]))
      srcs[0] = first.resize((first.width * 2, first.height * 2), Image.Resampling.BILINEAR)
    sample = proc.process(_record(srcs), prompt_only=True)
    grids = _grids(sample)
    ours = _ours_as_release(sample, grids)
    for i, p in enumerate(paths):
      want, grid = _release_patches(utils, p, lo, hi, upscale and i == 0)
      assert grid == (grids[i][0] * 2, grids[i][1] * 2), p
      np.testing.assert_allclose(ours[i], want, atol=1e-5, rtol=0, err_msg=p)
