"""Native-resolution grids of real images (docs/design.md §3.2), patch layout, mode conversion."""

import io
import os

import numpy as np
import pytest
import skimage
import sklearn.datasets
from PIL import Image

from testlib import data as ref
from testlib import release_trainkit
from neo_jax.data import images
from neo_jax.data import processor as processor_lib
from neo_jax.data.errors import BadSample

SK_DIR = os.path.join(os.path.dirname(skimage.__file__), "data")
SKL_DIR = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
REAL_IMAGES = [os.path.join(SK_DIR, n) for n in (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "chessboard_GRAY.png",
    "clock_motion.png", "coffee.png", "coins.png", "color.png", "horse.png", "hubble_deep_field.jpg",
    "ihc.png", "logo.png", "microaneurysms.png", "motorcycle_left.png", "page.png", "retina.jpg",
    "rocket.jpg", "text.png", "no_time_for_that_tiny.gif")] + [os.path.join(SKL_DIR, "china.jpg")]
BOUNDS = [(65536, 4194304), (4096, 65536), (1024, 16384 * 4)]


def test_twenty_real_images_of_varied_sizes():
  sizes = {Image.open(p).size for p in REAL_IMAGES}
  assert len(REAL_IMAGES) >= 20 and len(sizes) >= 15
  for path in REAL_IMAGES:
    w, h = Image.open(path).size
    for min_px, max_px in BOUNDS:
      for n in (1, 2, 3, 7):
        budget = ref.ref_budget(max_px, min_px, n)
        assert images.per_image_max_pixels(max_px, min_px, n) == budget
        exp = ref.ref_smart_resize(h, w, min_px, budget)
        assert images.smart_resize(h, w, 32, min_px, budget) == exp, (path, min_px, max_px, n)
        assert exp[0] % 32 == 0 and exp[1] % 32 == 0


def test_processed_grids_of_a_multi_image_record():
  """Real files through the processor: each image's token count follows the n-image budget."""
  paths = REAL_IMAGES[:5]
  min_px, max_px = 4096, 65536
  rec = {"images": paths, "conversations": [
      {"from": "human", "value": "<image>" * len(paths) + "Describe."}, {"from": "gpt", "value": "ok"}]}
  s = processor_lib.SampleProcessor(processor_lib.ProcessOptions(min_pixels=min_px, max_pixels=max_px)).process(rec)
  budget = ref.ref_budget(max_px, min_px, len(paths))
  expect = []
  for p in paths:
    w, h = Image.open(p).size
    rh, rw = ref.ref_smart_resize(h, w, min_px, budget)
    expect.append((rh // 32, rw // 32))
  starts = np.flatnonzero(s["input_ids"] == ref.IMG_START)
  ctx = s["input_ids"] == ref.CTX
  got = []
  for k, st in enumerate(starts):
    end = starts[k + 1] if k + 1 < len(starts) else len(ctx)
    hw = s["token_hw"][st:end][ctx[st:end]]
    got.append((int(hw[:, 0].max()) + 1, int(hw[:, 1].max()) + 1))
    assert len(hw) == got[-1][0] * got[-1][1]
  assert got == expect
  assert len(s["pixel_values"]) == sum(r * c for r, c in expect)


def test_aspect_ratio_and_rounding_edges():
  with pytest.raises(BadSample) as e:
    images.smart_resize(2, 402, 32, 1024, 4096)
  assert e.value.reason == "aspect_ratio"
  assert images.smart_resize(2, 400, 32, 0, 10**9) == (32, 384)  # 200:1 allowed; 12.5 -> 12
  # Ties round half to even like the release's Python round(): 48 -> 64, 80 -> 64.
  assert images.smart_resize(48, 80, 32, 0, 10**9) == (64, 64)


def test_patchify_layout_matches_loop_reference():
  rgb = np.random.default_rng(0).integers(0, 256, size=(64, 96, 3), dtype=np.uint8)
  got = images.patchify(rgb)
  assert got.shape == (6, 4, 768) and got.dtype == np.uint8
  np.testing.assert_array_equal(got, ref.ref_patches(rgb))
  # Patch (dy, dx) of token (row, col) sits at patch row 2*row+dy, col 2*col+dx.
  assert (got[4, 3, :256].reshape(16, 16) == rgb[48:64, 48:64, 0]).all()  # token (1,1), (dy,dx)=(1,1)


def test_normalize_is_imagenet():
  px = np.full((1, 4, 768), 255, np.uint8)
  out = images.normalize_pixels(px).reshape(4, 3, 256)
  np.testing.assert_allclose(out[0, :, 0], (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
                             rtol=1e-6)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA", "1"])
def test_modes_convert_to_rgb(mode):
  base = np.random.default_rng(1).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
  if mode == "I;16":
    img = Image.fromarray((base[..., 0].astype(np.uint16) * 257))
    assert img.mode.startswith("I")
  else:
    img = Image.fromarray(base).convert(mode)
  buf = io.BytesIO()
  img.save(buf, format="TIFF" if mode in ("CMYK", "I;16") else "PNG")
  out = images.open_image(buf.getvalue())
  assert out.mode == "RGB" and out.size == (50, 40)
  if mode == "I;16":  # 16-bit scaled down, not clipped
    np.testing.assert_allclose(np.asarray(out)[..., 0].astype(int), base[..., 0].astype(int), atol=1)


def test_16bit_grey_is_scaled_where_the_release_clips(tmp_path):
  """The release opens images with ``Image.open(path).convert("RGB")``
  (data_processor.py:158): Pillow clips a 16-bit grey image at 255. ``to_rgb`` scales it
  (the deviation documented there); 32-bit values within 0..255 stay as they are in both."""
  vals = np.array([[0, 1, 128, 255, 256, 4095, 32768, 65535]], np.uint16)
  path = tmp_path / "grey16.png"
  Image.fromarray(vals).save(path)
  release = np.asarray(Image.open(path).convert("RGB"))
  np.testing.assert_array_equal(release, np.repeat(np.minimum(vals, 255)[..., None], 3, -1))
  ours = np.asarray(images.open_image(path.read_bytes()))
  want = np.floor(vals.astype(np.float64) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
  np.testing.assert_array_equal(ours, np.repeat(want[..., None], 3, -1))
  small = Image.fromarray(np.array([[0, 7, 200, 255]], np.int32))
  np.testing.assert_array_equal(np.asarray(images.to_rgb(small)), np.asarray(small.convert("RGB")))


@pytest.mark.skipif(release_trainkit.trainkit_dir() is None,
                    reason="set NEO_RELEASE_DIR to the extracted release")
def test_release_opens_images_with_pillow_convert_rgb():
  root = release_trainkit.trainkit_dir()
  assert 'Image.open(image_path).convert("RGB")' in release_trainkit.line(
      root / "neo/data/data_processor.py", 158)
