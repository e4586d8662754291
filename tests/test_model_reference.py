"""The Flax NEO forward and loss against the float64 NumPy reference (issue 2 acceptance).

The reference (``np_reference.py``) is written from docs/design.md alone and reads
full images, token ids and release-layout weights; the model reads the packed
batch of ``inputs.py``. The batch (``model_fixtures.packed_batch``) packs, in 2
rows: text only, one image, two images of different sizes, a 3-frame video,
with padding at the end of each row.
"""

import functools

import numpy as np
import pytest

from testlib import model as mf
from testlib import np_reference as ref
from neo_jax.model import positions
from neo_jax.ops import mask

LOGIT_TOL = 1e-4
LOSS_TOL = 1e-5


@functools.lru_cache(maxsize=None)
def _setup():
  cfg = mf.tiny_config()
  pb = mf.packed_batch(cfg, seed=0)
  params = mf.init_params(cfg, seed=0)
  ref_logits = ref.forward(pb.batch["input_ids"], pb.batch["segment_ids"], pb.images,
                           mf.export_weights(cfg, params), mf.reference_config(cfg))
  return cfg, pb, params, ref_logits


def test_batch_holds_the_acceptance_mix():
  """The hand-built batch has the four sample kinds, padding, and images of 2 sizes."""
  _, pb, _, _ = _setup()
  kinds = [k for row in pb.samples for (_, _, _, k) in row]
  assert kinds == ["text", "image", "two_images", "video"]
  assert all((pb.batch["segment_ids"][b, -1] == 0) for b in range(2))
  shapes = {im.shape for row in pb.images for im in row}
  assert {(64, 96, 3), (32, 64, 3), (64, 64, 3)} <= shapes


def test_logits_match_float64_reference():
  """Flax float32 logits == NumPy float64 reference logits (max abs err <= 1e-4) on every
  real (non-padding) token of the packed batch."""
  cfg, pb, params, ref_logits = _setup()
  logits = np.asarray(mf.logits_fn(cfg)(params, pb.batch))
  real = pb.batch["segment_ids"] > 0
  err = np.abs(logits.astype(np.float64) - ref_logits)[real]
  assert err.max() <= LOGIT_TOL, f"max abs logit error {err.max():.3g}"
  # The comparison is not vacuous: logits vary at order 1.
  assert ref_logits[real].std() > 0.1


def test_untied_head_logits_match_float64_reference():
  """With ``tie_word_embeddings=False`` (the NEO-9B layout) the model uses its own
  ``lm_head/kernel``, and the logits match the reference reading ``lm_head.weight``."""
  _, pb, _, _ = _setup()
  cfg = mf.tiny_config(tie_word_embeddings=False)
  params = mf.init_params(cfg, seed=5)
  assert params["lm_head"]["kernel"].shape == (cfg.hidden_size, cfg.vocab_size)
  want = ref.forward(pb.batch["input_ids"], pb.batch["segment_ids"], pb.images,
                     mf.export_weights(cfg, params), mf.reference_config(cfg))
  logits = np.asarray(mf.logits_fn(cfg)(params, pb.batch))
  real = pb.batch["segment_ids"] > 0
  assert np.abs(logits - want)[real].max() <= LOGIT_TOL


@pytest.mark.parametrize("corruption", ["swap_hw", "shift_pixels"])
def test_reference_comparison_detects_wrong_vision_inputs(corruption):
  """The reference check can fail: a batch whose token (row, col) are swapped or whose
  pixels are moved to the neighbouring token differs from the reference by far more
  than the tolerance on visual and later tokens."""
  cfg, pb, params, ref_logits = _setup()
  bad = {k: v.copy() for k, v in pb.batch.items()}
  if corruption == "swap_hw":
    bad["token_hw"] = bad["token_hw"][..., ::-1].copy()
  else:
    ctx = bad["input_ids"] == cfg.img_context_token_id
    rolled = np.roll(bad["pixel_values"], 1, axis=1)
    bad["pixel_values"] = np.where(ctx[..., None, None], rolled, bad["pixel_values"])
  logits = np.asarray(mf.logits_fn(cfg)(params, bad))
  real = pb.batch["segment_ids"] > 0
  assert np.abs(logits - ref_logits)[real].max() > 1e-2


@pytest.mark.parametrize("mode", ["token", "sample", "square"])
def test_loss_matches_float64_reference(mode):
  """``loss.lm_loss`` on the model's hidden states == reference loss (full float64 logits,
  log-softmax, per-sample n and weights) to <= 1e-5, for each weighting mode."""
  cfg, pb, params, ref_logits = _setup()
  cfg = mf.tiny_config(loss_weighting=mode)
  out = mf.model_loss(cfg, params, pb.batch)
  want, want_w, _ = ref.loss(ref_logits, pb.batch["labels"], pb.batch["segment_ids"], mode)
  got = out.weighted_ce / out.weight
  assert abs(got - want) <= LOSS_TOL, (got, want)
  np.testing.assert_allclose(out.weight, want_w, rtol=1e-6)
  assert int(out.tokens) == len(ref.predictions(pb.batch["labels"], pb.batch["segment_ids"]))
  assert int(out.dropped) == 0


@pytest.mark.parametrize("chunk", [100, 512, 1000])
def test_loss_vocab_chunking_is_exact(chunk):
  """The chunked LM head + cross entropy gives the reference loss for a chunk that does
  not divide the vocabulary (last chunk overlaps the previous one), one chunk, and a
  chunk larger than the vocabulary."""
  cfg, pb, params, ref_logits = _setup()
  out = mf.model_loss(mf.tiny_config(loss_vocab_chunk=chunk), params, pb.batch)
  want, _, _ = ref.loss(ref_logits, pb.batch["labels"], pb.batch["segment_ids"], "square")
  assert abs(out.weighted_ce / out.weight - want) <= LOSS_TOL


def test_weighting_modes_differ_on_this_batch():
  """The three modes give different reference losses here (samples have different n),
  so the per-mode checks above tell the modes apart."""
  _, pb, _, ref_logits = _setup()
  vals = [ref.loss(ref_logits, pb.batch["labels"], pb.batch["segment_ids"], m)[0]
          for m in ("token", "sample", "square")]
  assert min(abs(a - b) for a, b in [(vals[0], vals[1]), (vals[0], vals[2]),
                                     (vals[1], vals[2])]) > 10 * LOSS_TOL
  ns = {n for (_, _, _, n) in ref.predictions(pb.batch["labels"], pb.batch["segment_ids"])}
  assert len(ns) >= 3


@pytest.mark.parametrize("mode", ["token", "square"])
def test_loss_with_gathered_supervised_tokens(mode):
  """``max_supervised_tokens`` = the largest per-row count gives the same loss as no
  gathering (and the reference); a smaller M keeps each row's first M predictions
  (reference restricted the same way, weights from the full n) and reports the
  rest as ``dropped``."""
  cfg, pb, params, ref_logits = _setup()
  labels, seg = pb.batch["labels"], pb.batch["segment_ids"]
  preds = ref.predictions(labels, seg)
  per_row = [sum(1 for p in preds if p[0] == b) for b in range(labels.shape[0])]
  m_all = max(per_row)

  full = mf.model_loss(mf.tiny_config(loss_weighting=mode), params, pb.batch)
  out = mf.model_loss(mf.tiny_config(loss_weighting=mode, max_supervised_tokens=m_all),
                    params, pb.batch)
  want, _, dropped = ref.loss(ref_logits, labels, seg, mode, max_per_row=m_all)
  assert dropped == 0 and int(out.dropped) == 0
  assert abs(out.weighted_ce / out.weight - want) <= LOSS_TOL
  np.testing.assert_allclose(out.weighted_ce / out.weight, full.weighted_ce / full.weight,
                             rtol=1e-6)

  m_small = min(per_row) - 3
  out = mf.model_loss(mf.tiny_config(loss_weighting=mode, max_supervised_tokens=m_small),
                    params, pb.batch)
  want, _, dropped = ref.loss(ref_logits, labels, seg, mode, max_per_row=m_small)
  assert dropped == sum(per_row) - 2 * m_small > 0
  assert int(out.dropped) == dropped
  assert int(out.tokens) == 2 * m_small
  assert abs(out.weighted_ce / out.weight - want) <= LOSS_TOL


def test_positions_and_units_match_reference_loops():
  """``positions.native_rope_positions`` / ``unit_ids`` and ``ops.mask.mixed_mask`` ==
  the reference's explicit loops of docs/design.md §1.3 / §1.4 on the real tokens of the batch."""
  cfg, pb, _, _ = _setup()
  b = pb.batch
  kw = dict(img_start_id=cfg.img_start_token_id, img_context_id=cfg.img_context_token_id)
  pos = np.asarray(positions.native_rope_positions(b["input_ids"], b["segment_ids"],
                                                   b["token_hw"], **kw))
  units = np.asarray(positions.unit_ids(b["input_ids"], **kw))
  m = np.asarray(mask.mixed_mask(b["segment_ids"], units))
  rcfg = mf.reference_config(cfg)
  for r in range(2):
    grids = [(im.shape[0] // 32, im.shape[1] // 32) for im in pb.images[r]]
    t, h, w, unit = ref.positions_and_units(b["input_ids"][r], b["segment_ids"][r], grids, rcfg)
    real = b["segment_ids"][r] > 0
    np.testing.assert_array_equal(pos[r, real], np.stack([t, h, w], -1)[real])
    np.testing.assert_array_equal(units[r, real], unit[real])
    want = ref.mixed_mask(b["segment_ids"][r], unit)
    np.testing.assert_array_equal(m[r][np.ix_(real, real)], want[np.ix_(real, real)])
    # Real tokens never see padding.
    assert not m[r][np.ix_(real, ~real)].any()
  # Spot values of §1.3 on the two-image sample (row 1): 4 text, <img>, 6 ctx, </img>;
  # the image's tokens share t(<img>) + 1 and (h, w) run row-major over its 2x3 grid.
  np.testing.assert_array_equal(pos[1, :12, 0], [0, 1, 2, 3, 4, 5, 5, 5, 5, 5, 5, 6])
  np.testing.assert_array_equal(pos[1, 5:11, 1:].tolist(),
                                [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])


def test_segment_sums_match_loops():
  """``positions.segment_cumsum`` / ``segment_total`` == per-sample loops on random
  packings (samples of random lengths, trailing padding)."""
  rng = np.random.default_rng(3)
  seg = np.zeros((4, 40), np.int32)
  for r in range(4):
    i, s = 0, 1
    while i < 32:
      n = int(rng.integers(1, 9))
      seg[r, i:i + n] = s
      i, s = i + n, s + 1
    seg[r, 32:] = 0
  x = rng.integers(0, 3, size=seg.shape).astype(np.int32)
  csum = np.asarray(positions.segment_cumsum(x, seg))
  tot = np.asarray(positions.segment_total(x, seg))
  for r in range(4):
    for i in range(40):
      same = np.flatnonzero(seg[r] == seg[r, i])
      assert tot[r, i] == x[r, same].sum()
      assert csum[r, i] == x[r, same[same <= i]].sum()
