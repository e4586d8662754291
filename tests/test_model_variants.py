"""The NEO paper's Table 3 switches (``model.attention_mask``, ``model.rope_mode``): each
changes what a visual token computes; causal attention on the kernel path equals the
reference path; 1D RoPE equals Native-RoPE on text; mRoPE indices follow Qwen2-VL's rule."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from neo_jax.convert import convert as cv
from neo_jax.model import positions as pos_lib
from neo_jax.model import rope
from neo_jax.ops import attention as attention_lib
from testlib import model as mf

CTX, START, END = 500, 501, 502


def _visual_rows(pb):
  return pb.batch["input_ids"] == CTX


@pytest.mark.parametrize("switch", [{"attention_mask": "causal"}, {"rope_mode": "1d"},
                                    {"rope_mode": "mrope"}, {"rope_theta_hw": 1e6}])
def test_each_switch_changes_the_logits_of_visual_tokens(switch):
  base = mf.tiny_config()
  pb = mf.packed_batch(base, seed=0)
  params = mf.init_params(base, seed=0)
  want = np.asarray(mf.logits_fn(base)(params, pb.batch))
  got = np.asarray(mf.logits_fn(mf.tiny_config(**switch))(params, pb.batch))
  vis = _visual_rows(pb)
  assert np.abs(got - want)[vis].max() > 1e-3, switch
  # The first sample of row 0 is text only: the mask, 1D positions (text keeps its
  # running index) and the H/W base do not touch it; mRoPE does (its H/W branches are off).
  first = (pb.batch["segment_ids"][0] == 1)
  if switch != {"rope_mode": "mrope"}:
    np.testing.assert_allclose(got[0][first], want[0][first], atol=1e-5)


@pytest.mark.slow  # over a minute; the kernel's causal-only blocks are in test_flash_mixed (default)
def test_causal_mask_kernel_path_equals_reference_path():
  cfgs = {impl: mf.tiny_config(attention_mask="causal", attention_impl=impl,
                               attention_block_q=32, attention_block_kv=32)
          for impl in ("xla", "pallas")}
  pb = mf.packed_batch(cfgs["xla"], seed=1)
  params = mf.init_params(cfgs["xla"], seed=1)
  real = pb.batch["segment_ids"] > 0
  lx = np.asarray(mf.logits_fn(cfgs["xla"])(params, pb.batch))
  lp = np.asarray(mf.logits_fn(cfgs["pallas"])(params, pb.batch))
  np.testing.assert_allclose(lp[real], lx[real], atol=1e-4)
  gx, gp = (jax.grad(lambda p, c=c: mf.loss_value(c, p, pb.batch))(params)
            for c in (cfgs["xla"], cfgs["pallas"]))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(gx), jax.tree_util.tree_leaves(gp)):
    scale = max(float(np.abs(a).max()), 1e-6)
    assert float(np.abs(np.asarray(b) - np.asarray(a)).max()) <= 1e-4 * scale + 1e-7, \
        jax.tree_util.keystr(path)
  # The causal model really is causal inside images: the ops-level reference with the
  # visual-unit ids zeroed is a plain causal mask.
  seg = np.ones((1, 6), np.int32)
  q = np.random.default_rng(0).normal(size=(1, 6, 2, 8)).astype(np.float32)
  a = attention_lib.reference_attention(q, q, q[..., :4], seg, np.zeros_like(seg), scale=0.3)
  b = attention_lib.reference_attention(q, q, q[..., :4], seg, np.asarray([[0, 1, 1, 1, 0, 0]]),
                                        scale=0.3)
  assert np.abs(np.asarray(a)[0, 1] - np.asarray(b)[0, 1]).max() > 1e-4


def test_1d_rope_on_text_equals_native():
  base = mf.tiny_config()
  rng = np.random.default_rng(3)
  batch = {"input_ids": rng.integers(0, 500, (2, 40)).astype(np.int32),
           "segment_ids": np.repeat([[1] * 25 + [2] * 15], 2, axis=0).astype(np.int32),
           "token_hw": np.zeros((2, 40, 2), np.int32),
           "pixel_values": np.zeros((2, 40, 4, 768), np.uint8)}
  params = mf.init_params(base, seed=3)
  want = np.asarray(mf.logits_fn(base)(params, batch))
  got = np.asarray(mf.logits_fn(mf.tiny_config(rope_mode="1d"))(params, batch))
  np.testing.assert_array_equal(got, want)


def test_mrope_positions_follow_qwen2_vl_on_a_hand_example():
  """Sample 1: a, b, <img>, a 2x3 image, </img>, c. Qwen2-VL: text runs 0, 1, 2; the image
  starts at s = 3 with (3, 3 + row, 3 + col); after it, 3 + max(2, 3) = 6 for </img>,
  then 7. Sample 2 (two text tokens) restarts at 0."""
  ids = [10, 11, START] + [CTX] * 6 + [END, 12, 13, 14]
  seg = [1] * 11 + [2, 2]
  hw = [(0, 0)] * 3 + [(r, c) for r in range(2) for c in range(3)] + [(0, 0)] * 4
  got = np.asarray(pos_lib.mrope_positions(
      np.asarray([ids], np.int32), np.asarray([seg], np.int32), np.asarray([hw], np.int32),
      img_start_id=START, img_context_id=CTX))[0]
  want = [(0, 0, 0), (1, 1, 1), (2, 2, 2),
          (3, 3, 3), (3, 3, 4), (3, 3, 5), (3, 4, 3), (3, 4, 4), (3, 4, 5),
          (6, 6, 6), (7, 7, 7), (0, 0, 0), (1, 1, 1)]
  assert got.tolist() == [list(w) for w in want]
  # Qwen2-VL's sections at head_dim 128, and mRoPE == 1D RoPE where t = h = w.
  assert rope.mrope_sections(128) == (16, 24, 24)
  x = np.random.default_rng(0).normal(size=(1, 4, 2, 16)).astype(np.float32)
  p = np.asarray([[[5, 5, 5], [6, 6, 6], [7, 7, 7], [9, 9, 9]]], np.int32)
  np.testing.assert_allclose(rope.apply_mrope_half(x, p, 1e6),
                             rope.apply_rope_half(x, p[..., 0], 1e6), atol=1e-6)


def test_variants_refuse_export(tmp_path):
  cfg = mf.tiny_config(rope_mode="1d")
  params = cv.collect(cv.random_leaves(cfg, seed=0))
  with pytest.raises(ValueError, match="ablation variant"):
    cv.export_release(cv.TreeSource(params), cfg, str(tmp_path / "out"), progress=False)


@pytest.mark.parametrize("mode", ["1d", "mrope"])
def test_cached_decoding_of_the_position_variants_equals_uncached(mode):
  """1D RoPE: the next t is the running index; mRoPE: one past the largest of the
  three indices (Qwen2-VL); both as the uncached row gives them."""
  from neo_jax.infer import decode, generate  # pylint: disable=import-outside-toplevel
  from neo_jax.model.neo import NEO  # pylint: disable=import-outside-toplevel
  cfg = mf.tiny_config(rope_mode=mode)
  params = mf.init_params(cfg, seed=5)
  rng = np.random.default_rng(5)
  img = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
  ids, hw, pix = mf._image_block(img, cfg)  # pylint: disable=protected-access
  ids = [7, 8, 9] + ids + [11, 12]
  hw = [(0, 0)] * 3 + hw + [(0, 0)] * 2
  prompt = {"input_ids": np.asarray(ids, np.int32), "token_hw": np.asarray(hw, np.int32),
            "pixel_values": np.asarray([p for p, t in zip(pix, ids[3:]) if t == CTX], np.uint8)}
  want = generate.greedy_generate(NEO(cfg), params, [prompt], max_new_tokens=6,
                                  banned_ids=(START, CTX, END))
  assert decode.Generator(cfg, bucket=16).generate(params, [prompt], max_new_tokens=6) == want
