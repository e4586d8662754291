"""The mixed mask in the full model (docs/design.md §1.4; issue 2 acceptance).

* Bidirectional attention inside an image matters: forcing it causal (visual-unit
  ids zeroed) changes the logits of visual tokens.
* Nothing leaks across packed samples or from padding: perturbing another sample's
  tokens / pixels, or the padding, leaves a sample's logits unchanged bit for bit
  (XLA attention path, float32).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testlib import model as mf
from neo_jax.model import neo
from neo_jax.model import positions
from neo_jax.ops import mask as mask_lib


@functools.lru_cache(maxsize=None)
def _setup():
  cfg = mf.tiny_config()
  pb = mf.packed_batch(cfg, seed=1)
  params = mf.init_params(cfg, seed=1)
  logits = np.asarray(mf.logits_fn(cfg)(params, pb.batch))
  return cfg, pb, params, logits


def _fresh_logits(cfg, params, batch):
  """Logits from a new trace (so monkeypatched functions are picked up)."""
  model = neo.NEO(cfg)
  fn = jax.jit(lambda p, b: model.apply({"params": p}, b["input_ids"], b["segment_ids"],
                                        b["token_hw"], b["pixel_values"]))
  return np.asarray(fn(params, batch))


def _span(pb, row, kind):
  for _, start, end, k in pb.samples[row]:
    if k == kind:
      return start, end
  raise KeyError(kind)


def test_causal_inside_image_changes_visual_logits(monkeypatch):
  """With unit ids zeroed (images attended causally) the logits of visual tokens
  change (all but the last token of each image, whose causal view is the same), while
  the text tokens before the first image of each row stay bit for bit the same."""
  cfg, pb, params, logits = _setup()
  monkeypatch.setattr(positions, "unit_ids", lambda ids, **kw: jnp.zeros_like(ids))
  causal = _fresh_logits(cfg, params, pb.batch)
  ids = pb.batch["input_ids"]
  ctx = ids == cfg.img_context_token_id
  last_of_image = ctx & ~np.concatenate([ctx[:, 1:], np.zeros((2, 1), bool)], axis=1)
  changed = np.abs(causal - logits).max(-1)
  inner = ctx & ~last_of_image
  assert inner.sum() >= 20
  assert (changed[inner] > 1e-3).all(), changed[inner].min()
  for r in range(2):
    first_img = int(np.flatnonzero(ids[r] == cfg.img_start_token_id)[0])
    assert first_img > 0
    np.testing.assert_array_equal(causal[r, :first_img], logits[r, :first_img])


def _perturb(pb, cfg, row, start, end, seed, tokens=True, pixels=True):
  """A copy of the batch with text ids and visual pixels of ``[start, end)`` of ``row``
  redrawn (image structure kept)."""
  rng = np.random.default_rng(seed)
  b = {k: v.copy() for k, v in pb.batch.items()}
  ids = b["input_ids"][row, start:end]
  text = ids < 500
  if tokens:
    ids[text] = rng.integers(0, 500, size=int(text.sum()))
  if pixels:
    ctx = ids == cfg.img_context_token_id
    pix = b["pixel_values"][row, start:end]
    pix[ctx] = rng.integers(0, 256, size=pix[ctx].shape, dtype=np.uint8)
  return b


@pytest.mark.parametrize("row,changed,kept", [
    (1, "two_images", "video"),   # earlier sample perturbed, later one checked
    (1, "video", "two_images"),
    (0, "text", "image"),
    (0, "image", "text"),
])
def test_other_sample_does_not_leak(row, changed, kept):
  """Perturbing one packed sample's text ids and pixels changes its own logits but
  leaves the other sample of the row bit for bit unchanged."""
  cfg, pb, params, logits = _setup()
  s0, s1 = _span(pb, row, changed)
  k0, k1 = _span(pb, row, kept)
  batch = _perturb(pb, cfg, row, s0, s1, seed=7)
  out = mf.logits_fn(cfg)(params, batch)
  out = np.asarray(out)
  assert np.abs(out[row, s0:s1] - logits[row, s0:s1]).max() > 1e-2
  assert np.array_equal(out[row, k0:k1], logits[row, k0:k1])
  assert np.array_equal(out[1 - row], logits[1 - row])


def test_padding_does_not_leak():
  """Redrawing the padding (random ids including ``<img>`` / ``<IMG_CONTEXT>`` with random
  pixels and (row, col)) leaves every real token's logits bit for bit unchanged."""
  cfg, pb, params, logits = _setup()
  rng = np.random.default_rng(11)
  b = {k: v.copy() for k, v in pb.batch.items()}
  pad = b["segment_ids"] == 0
  choices = np.array([cfg.img_start_token_id, cfg.img_context_token_id, cfg.img_end_token_id,
                      1, 2, 3, 499])
  b["input_ids"][pad] = rng.choice(choices, size=int(pad.sum()))
  b["token_hw"][pad] = rng.integers(0, 3, size=(int(pad.sum()), 2))
  b["pixel_values"][pad] = rng.integers(0, 256, size=b["pixel_values"][pad].shape,
                                        dtype=np.uint8)
  out = np.asarray(mf.logits_fn(cfg)(params, b))
  real = ~pad
  assert np.abs(out[pad] - logits[pad]).max() > 1e-2  # the padding itself did change
  assert np.array_equal(out[real], logits[real])


def test_leak_check_detects_a_mask_without_segments(monkeypatch):
  """The no-leak check can fail: with a mask that ignores packed-sample ids, perturbing
  the first sample of row 1 changes the second sample's logits."""
  cfg, pb, params, _ = _setup()

  original = mask_lib.mixed_mask

  def leaky(segment_ids, unit_ids):
    del segment_ids
    return original(jnp.ones_like(unit_ids), unit_ids)

  monkeypatch.setattr(mask_lib, "mixed_mask", leaky)
  base = _fresh_logits(cfg, params, pb.batch)
  s0, s1 = _span(pb, 1, "two_images")
  k0, k1 = _span(pb, 1, "video")
  out = _fresh_logits(cfg, params, _perturb(pb, cfg, 1, s0, s1, seed=7))
  assert np.abs(out[1, k0:k1] - base[1, k0:k1]).max() > 1e-3


def test_limit_form_equals_dense_mask():
  """``mask.visible_limit`` (the kernel's form: same sample and ``j <= limit_i`` for a
  real token, the diagonal for padding) gives exactly ``mask.mixed_mask`` on the packed
  batch (images contiguous)."""
  cfg, pb, _, _ = _setup()
  units = positions.unit_ids(pb.batch["input_ids"], img_start_id=cfg.img_start_token_id,
                             img_context_id=cfg.img_context_token_id)
  seg = pb.batch["segment_ids"]
  dense = np.asarray(mask_lib.mixed_mask(seg, units))
  limit = np.asarray(mask_lib.visible_limit(units))
  s = seg.shape[1]
  from_limit = (seg[:, :, None] == seg[:, None, :]) & (
      np.arange(s)[None, None, :] <= limit[:, :, None])
  from_limit &= (np.asarray(seg)[:, :, None] > 0) | np.eye(s, dtype=bool)[None]
  assert (np.asarray(seg) == 0).any()      # the batch has padding rows to check
  np.testing.assert_array_equal(from_limit, dense)
