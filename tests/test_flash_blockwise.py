"""The plain-JAX block-sparse attention (ops/flash_blockwise.py) against the dense reference.

Same 50 random packed cases as the kernel (forward and q / k / v gradients); which
kv blocks it visits, probed with NaN keys / values; the dispatch; a 36K-token layer
where the dense path cannot allocate.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neo_jax.ops import attention as attention_lib
from neo_jax.ops import block_ranges as br
from neo_jax.ops import flash_blockwise
from neo_jax.ops import mask as mask_lib
from testlib.attention import (CONFIGS, N_CASES, assert_close_to_reference, compare_fn,
                               packed_case, random_packed_ids)


@pytest.mark.parametrize("i", range(N_CASES))
def test_blockwise_matches_reference(i):
  cfg, args = packed_case(i)
  assert_close_to_reference(cfg, *compare_fn("blockwise", *cfg)(*args))


@pytest.mark.parametrize("i", range(len(CONFIGS)))
def test_one_block_matches_reference(i, monkeypatch):
  """Blocks at least as long as the sequence (a short prompt): the forward's
  single-block path (no loops) against the dense reference, values and gradients
  (the differentiated call) and the values of a plain call, with GQA, padding rows
  and an odd length (padded inside to a multiple of 8)."""
  monkeypatch.setattr(flash_blockwise, "ONE_BLOCK_SCORE_BYTES", 1 << 40)
  cfg, args = packed_case(i)
  one = cfg[:6] + (512, 512)
  assert cfg[1] <= 512
  assert_close_to_reference(one, *compare_fn("blockwise", *one)(*args))
  q, k, v, seg, unit, _ = args
  scale = cfg[4] ** -0.5
  got = flash_blockwise.blockwise_attention(q, k, v, seg, unit, scale=scale, block_q=512,
                                            block_kv=512)
  want = attention_lib.reference_attention(q, k, v, seg, unit, scale=scale)
  assert_close_to_reference(one, [got], [want])


def test_one_block_path_is_taken_only_for_one_block(monkeypatch):
  """The single-block forward runs exactly when the padded sequence is one q block
  and one kv block and its scores fit the budget: the primal budget for a plain
  call, the smaller one under ``jax.grad``. Counted by wrapping it."""
  calls = []
  real = flash_blockwise._fwd_one_block  # pylint: disable=protected-access
  monkeypatch.setattr(flash_blockwise, "_fwd_one_block",
                      lambda *a: calls.append(1) or real(*a))
  _, (q, k, v, seg, unit, _) = packed_case(1)          # batch 1, seq 130 (136 padded), 4 heads
  scores = 4 * 136 * 136 * 4

  def run(bq, bk, grad):
    f = lambda q: flash_blockwise.blockwise_attention(q, k, v, seg, unit, scale=0.25,
                                                      block_q=bq, block_kv=bk).sum()
    calls.clear()
    (jax.grad(f) if grad else f)(q)
    return len(calls)

  monkeypatch.setattr(flash_blockwise, "ONE_BLOCK_SCORE_BYTES", 0)
  for bq, bk, budget, want in ((256, 256, scores, 1), (64, 256, scores, 0),
                               (256, 64, scores, 0), (136, 136, scores, 1),
                               (256, 256, scores - 1, 0)):
    monkeypatch.setattr(flash_blockwise, "ONE_BLOCK_SCORE_BYTES_PRIMAL", budget)
    assert run(bq, bk, grad=False) == want, (bq, bk, budget)
  monkeypatch.setattr(flash_blockwise, "ONE_BLOCK_SCORE_BYTES_PRIMAL", 1 << 40)
  assert run(256, 256, grad=True) == 0
  monkeypatch.setattr(flash_blockwise, "ONE_BLOCK_SCORE_BYTES", scores)
  assert run(256, 256, grad=True) == 1


@pytest.mark.parametrize("bq,bk", [(16, 16), (16, 32), (32, 16)])
def test_visits_exactly_the_nonempty_blocks(bq, bk):
  """For each q block, NaN in every kv block outside the visible-block set leaves its
  rows finite (never visited), and NaN in any one visible block reaches them (visited):
  the visited set is the dense mask's non-empty blocks, which is the kernel's set
  (test_flash_mixed checks the kernel's ranges against the same dense mask)."""
  rng = np.random.default_rng(bq * 7 + bk)
  s, nq, nk = 128, 128 // bq, 128 // bk
  seg, unit = random_packed_ids(rng, 1, s)
  nonempty = np.asarray(mask_lib.mixed_mask(seg, unit)).reshape(nq, bq, nk, bk).any((1, 3))
  q = jnp.asarray(rng.normal(size=(1, s, 2, 16)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, s, 1, 16)), jnp.float32)
  v = np.asarray(rng.normal(size=(1, s, 1, 8)), np.float32)
  run = jax.jit(lambda v: flash_blockwise.blockwise_attention(
      q, k, v, jnp.asarray(seg), jnp.asarray(unit), scale=0.25, block_q=bq, block_kv=bk))
  for i in range(nq):
    rows = slice(i * bq, (i + 1) * bq)
    poisoned = v.copy()
    for j in np.flatnonzero(~nonempty[i]):
      poisoned[:, j * bk:(j + 1) * bk] = np.nan
    assert np.isfinite(np.asarray(run(jnp.asarray(poisoned)))[:, rows]).all(), i
    for j in np.flatnonzero(nonempty[i]):
      one = v.copy()
      one[:, j * bk:(j + 1) * bk] = np.nan
      assert np.isnan(np.asarray(run(jnp.asarray(one)))[:, rows]).any(), (i, j)
  counts = br.block_counts(jnp.asarray(seg), jnp.asarray(unit), bq, bk)
  assert counts["visited"] == nonempty.sum()


def test_dispatch_and_auto_off_tpu():
  """``attention(impl="xla_blockwise")`` runs it; ``auto`` chooses it on CPU and GPU,
  the kernel on TPU."""
  from neo_jax.ops import backend  # pylint: disable=import-outside-toplevel
  assert backend.resolve_attention_impl("auto", "cpu") == "xla_blockwise"
  assert backend.resolve_attention_impl("auto", "gpu") == "xla_blockwise"
  assert backend.resolve_attention_impl("auto", "tpu") == "pallas"
  cfg, (q, k, v, seg, unit, _) = packed_case(1)
  got = attention_lib.attention(q, k, v, seg, unit, scale=0.25, impl="xla_blockwise",
                                block_q=32, block_kv=64)
  want = attention_lib.reference_attention(q, k, v, seg, unit, scale=0.25)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)
  del cfg


S36K, HQ, HKV, D = 36864, 16, 8, 128  # one NEO-ov-2B-shaped attention at 36K tokens


def _ids_36k():
  """Four packed samples of 9216 tokens, each with a 1024-token image after 64 text tokens."""
  seg = np.repeat(np.arange(1, 5, dtype=np.int32), S36K // 4)[None]
  unit = np.zeros((1, S36K), np.int32)
  for n in range(4):
    unit[0, n * (S36K // 4) + 64:n * (S36K // 4) + 64 + 1024] = n + 1
  return jnp.asarray(seg), jnp.asarray(unit)


def _loss_36k(fn):
  seg, unit = _ids_36k()

  def loss(q, k, v):  # and, as aux, the output's first 2048 rows
    o = fn(q, k, v, seg, unit, scale=D ** -0.5)
    return jnp.sum(o.astype(jnp.float32)), o[:, :2048]
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def test_36k_memory_plan_blockwise_fits_where_dense_cannot():
  """Compiled (not run) forward + backward at 36,864 tokens: XLA's buffer plan for the
  dense path needs more than this machine's 24 GiB (its float32 scores alone are
  16 x 36864^2 x 4 B = 87 GB); the blockwise path's temporaries are linear in the
  length (layout copies, float32 dQ / dK / dV accumulators: about 4.5x the 0.53 GB of
  q, k, v), under 4 GiB."""
  shapes = [jax.ShapeDtypeStruct((1, S36K, h, w), jnp.bfloat16)
            for h, w in ((HQ, 2 * D), (HKV, 2 * D), (HKV, D))]
  temp = {}
  for name, fn in (("dense", attention_lib.reference_attention),
                   ("blockwise", lambda *a, **kw: flash_blockwise.blockwise_attention(
                       *a, **kw, block_q=1024, block_kv=1024))):
    temp[name] = _loss_36k(fn).lower(*shapes).compile().memory_analysis().temp_size_in_bytes
  assert temp["dense"] > 24 * 2 ** 30, temp
  assert temp["blockwise"] < 4 * 2 ** 30, temp


@pytest.mark.slow
def test_36k_layer_runs_forward_and_backward():
  """The same attention run on this CPU in float32 (the CPU's fast matmul type): finite
  loss and gradients; the first sample's first 2048 rows (its image, tokens 64..1087,
  included whole) equal the dense reference on those rows."""
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(1, S36K, HQ, 2 * D)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, S36K, HKV, 2 * D)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(1, S36K, HKV, D)), jnp.float32)
  fn = lambda *a, **kw: flash_blockwise.blockwise_attention(*a, **kw, block_q=1024, block_kv=1024)
  (val, got), grads = _loss_36k(fn)(q, k, v)
  assert np.isfinite(float(val))
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)
  seg, unit = _ids_36k()
  head = slice(0, 2048)  # these rows see only keys among them (the image ends at 1087)
  want = attention_lib.reference_attention(q[:, head], k[:, head], v[:, head], seg[:, head],
                                           unit[:, head], scale=D ** -0.5)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)


@pytest.mark.parametrize("batch", [8, 12])
def test_under_a_mesh_divisible_or_not(devices8, batch):
  """Under an 8-device mesh with the training rules the blockwise path equals the dense
  reference, on a batch the mesh divides (shard_map per shard) and on one it does not
  (12 rows: plain JAX, partitioned by XLA), forward and q gradients."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from neo_jax.train import sharding  # pylint: disable=import-outside-toplevel
  mesh = jax.sharding.Mesh(devices8.reshape(8, 1, 1, 1), ("data", "fsdp", "tensor", "context"))
  rng = np.random.default_rng(batch)
  seg, unit = (jnp.asarray(x) for x in random_packed_ids(rng, batch, 64))
  q = jnp.asarray(rng.normal(size=(batch, 64, 4, 16)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(batch, 64, 2, 16)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(batch, 64, 2, 8)), jnp.float32)
  on_mesh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  q, k, v, seg, unit = jax.device_put((q, k, v, seg, unit), on_mesh)

  def loss(q):
    with nn.logical_axis_rules(sharding.DEFAULT_RULES), \
        jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      o = attention_lib.attention(q, k, v, seg, unit, scale=0.25, impl="xla_blockwise",
                                  block_q=32, block_kv=32)
    return jnp.sum(o ** 2), o

  (_, out), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(q)
  ref_loss = lambda q: jnp.sum(attention_lib.reference_attention(q, k, v, seg, unit,
                                                                 scale=0.25) ** 2)
  np.testing.assert_allclose(out, attention_lib.reference_attention(q, k, v, seg, unit,
                                                                    scale=0.25), atol=2e-5)
  np.testing.assert_allclose(g, jax.grad(ref_loss)(q), atol=2e-5)
