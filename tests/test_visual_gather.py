"""The patch embedder on the visual positions only (``model.max_visual_tokens``).

The gathered path must give the model's all-positions path (itself checked against
the NumPy reference in ``test_model_reference.py``) on a packed batch with images and a
video, logits and parameter gradients; a row with more visual tokens than the cap must
come out NaN (never with silently zero embeddings); the step counts the overflow and
the packer enforces the cap.
"""

from __future__ import annotations

import grain
import jax
import jax.numpy as jnp
import numpy as np

from neo_jax.data import packing
from neo_jax.model import visual_gather
from neo_jax.train import health
from testlib import model as mf


def _setup():
  cfg = mf.tiny_config(tie_word_embeddings=False)
  pb = mf.packed_batch(cfg, seed=4)
  params = mf.init_params(cfg, seed=4)
  counts = (pb.batch["input_ids"] == cfg.img_context_token_id).sum(1)
  return cfg, pb.batch, params, counts


def _with(cfg, m):
  c = cfg.copy_and_resolve_references()
  c.max_visual_tokens = m
  return c


def test_gathered_embedder_equals_every_position():
  cfg, batch, params, counts = _setup()
  assert counts.min() > 0 and counts.max() < batch["input_ids"].shape[1] // 2
  want = np.asarray(mf.logits_fn(cfg)(params, batch))
  for m in (int(counts.max()), int(counts.max()) + 7):
    got = np.asarray(mf.logits_fn(_with(cfg, m))(params, batch))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_gathered_embedder_gradients_equal_every_position():
  cfg, batch, params, counts = _setup()

  def grads(c):
    loss = lambda p: jnp.sum(mf.logits_fn(c)(p, batch)[..., :8] ** 2)
    return jax.grad(loss)(params)["vision_model"]

  want, got = grads(cfg), grads(_with(cfg, int(counts.max())))
  flat_w = dict(jax.tree_util.tree_leaves_with_path(want))
  for path, g in jax.tree_util.tree_leaves_with_path(got):
    np.testing.assert_allclose(np.asarray(g), np.asarray(flat_w[path]), atol=1e-5, rtol=1e-4)
    assert np.abs(np.asarray(g)).max() > 0


def test_a_row_over_the_cap_is_nan_and_counted():
  cfg, batch, params, counts = _setup()
  m = int(counts.min())            # the row with more visual tokens overflows
  over = counts > m
  assert over.any() and not over.all()
  got = np.asarray(mf.logits_fn(_with(cfg, m))(params, batch))
  want = np.asarray(mf.logits_fn(cfg)(params, batch))
  assert np.isnan(got[over]).all()
  np.testing.assert_allclose(got[~over], want[~over], atol=2e-5, rtol=1e-5)
  is_vis = jnp.asarray(batch["input_ids"] == cfg.img_context_token_id)
  assert int(visual_gather.dropped_visual(is_vis, m)) == int((counts - m).clip(0).sum())
  assert int(visual_gather.dropped_visual(is_vis, 0)) == 0
  with np.testing.assert_raises_regex(ValueError, "max_visual_tokens"):
    health.check_visual_fit({"dropped_visual": 3}, m)


def test_slots_are_the_visual_positions_in_order():
  is_vis = np.array([[0, 1, 1, 0, 1, 0], [1, 0, 0, 0, 0, 1]], bool)
  s = visual_gather.visual_slots(jnp.asarray(is_vis), 4)
  idx, keep = np.asarray(s.index), np.asarray(s.keep)
  np.testing.assert_array_equal(idx[0][keep[0]], [1, 2, 4])
  np.testing.assert_array_equal(idx[1][keep[1]], [0, 5])
  assert not np.asarray(s.overflow).any()
  assert np.asarray(visual_gather.visual_slots(jnp.asarray(is_vis), 2).overflow).tolist() == [
      True, False]


def test_packer_keeps_visual_tokens_per_sequence_under_the_cap():
  from neo_jax.core import tokens  # pylint: disable=import-outside-toplevel

  def sample(n_text, n_vis):
    n = n_text + n_vis
    ids = np.array([5] * n_text + [tokens.IMG_CONTEXT_TOKEN_ID] * n_vis, np.int32)
    return {"input_ids": ids, "labels": np.full(n, 5, np.int32),
            "token_hw": np.zeros((n, 2), np.int32),
            "pixel_values": np.zeros((n_vis, 4, 768), np.uint8), "num_supervised": 1}
  specs = [(4, 10), (4, 12), (2, 30), (3, 6), (5, 0), (2, 9)]
  src = grain.MapDataset.source([sample(*s) for s in specs]).to_iter_dataset()
  it = iter(packing.PackIterDataset(src, packing.PackOptions(
      seq_len=64, batch_size=2, max_visual_tokens=20, pad_id=0)))
  batches = list(it)
  assert it.stats()["skip/too_many_visual"] == 1          # the 30-token one
  visual_of_length = {t + v: v for t, v in specs}         # lengths are distinct
  kept = []
  for b in batches:
    for seg in b["segment_ids"]:
      lengths = [int((seg == s_id).sum()) for s_id in np.unique(seg[seg > 0])]
      kept += lengths
      assert sum(visual_of_length[n] for n in lengths) <= 20
  assert sorted(kept) == sorted(t + v for t, v in specs if v <= 20)
