"""Remat policies and mixed precision do not change what the model computes.

Every ``remat_policy`` (none / full / minimal / minimal_flash / save_qkv_attn / dots) gives the
same loss and gradients (to float32 rounding) on the tiny model; bfloat16 compute
with float32 parameters runs, keeps float32 gradients, and stays close to float32.
"""

import functools

import jax
import numpy as np
import pytest

from testlib import model as mf

POLICIES = ["none", "full", "minimal", "minimal_flash", "save_qkv_attn", "dots"]


@functools.lru_cache(maxsize=None)
def _batch_and_params():
  cfg = mf.tiny_config()
  return mf.packed_batch(cfg, seed=3), mf.init_params(cfg, seed=3)


@functools.lru_cache(maxsize=None)
def _loss_and_grads(policy, dtype="float32"):
  pb, params = _batch_and_params()
  cfg = mf.tiny_config(remat_policy=policy, dtype=dtype, loss_weighting="square")
  fn = lambda p, b: mf.loss_value(cfg, p, b)
  traced = jax.jit(jax.value_and_grad(fn)).trace(params, pb.batch)
  loss, grads = traced.lower().compile()(params, pb.batch)
  return float(loss), jax.tree_util.tree_map(np.asarray, grads), str(traced.jaxpr)


@pytest.mark.parametrize("policy", POLICIES[1:])
def test_remat_policy_keeps_loss_and_grads(policy):
  """Loss and every gradient leaf under ``policy`` == ``none`` (rtol 1e-5 / atol 1e-7
  times the leaf's scale), and the policy really wraps the layers in a checkpoint."""
  loss0, grads0, _ = _loss_and_grads("none")
  loss, grads, jaxpr = _loss_and_grads(policy)
  assert "checkpoint" in jaxpr or "remat" in jaxpr
  np.testing.assert_allclose(loss, loss0, rtol=1e-6)
  for (path, g), g0 in zip(jax.tree_util.tree_flatten_with_path(grads)[0],
                           jax.tree_util.tree_leaves(grads0)):
    np.testing.assert_allclose(g, g0, rtol=1e-5, atol=1e-7 * np.abs(g0).max() + 1e-9,
                               err_msg=jax.tree_util.keystr(path))


def test_no_remat_has_no_layer_checkpoint():
  """``none`` leaves the program without any checkpoint (the chunked cross entropy has
  its own backward, ``model/chunked_ce.py``, not a ``jax.checkpoint``); ``full`` wraps
  the decoder layers."""
  *_, jaxpr_none = _loss_and_grads("none")
  *_, jaxpr_full = _loss_and_grads("full")
  count = lambda s: s.count("checkpoint") + s.count("remat")
  assert count(jaxpr_none) == 0
  assert count(jaxpr_full) > 0


def test_bf16_compute_with_fp32_params_is_close():
  """dtype bfloat16 / param_dtype float32: the loss is within 2% of float32, the
  gradients are float32 and correlate with the float32 gradients (cosine > 0.98)."""
  loss32, grads32, _ = _loss_and_grads("minimal")
  loss16, grads16, _ = _loss_and_grads("minimal", "bfloat16")
  assert np.isfinite(loss16)
  np.testing.assert_allclose(loss16, loss32, rtol=2e-2)
  g16 = np.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(grads16)])
  g32 = np.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(grads32)])
  assert all(g.dtype == np.float32 for g in jax.tree_util.tree_leaves(grads16))
  cos = g16 @ g32 / (np.linalg.norm(g16) * np.linalg.norm(g32))
  assert cos > 0.98, cos
