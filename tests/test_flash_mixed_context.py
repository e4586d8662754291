"""The kernel with the sequence sharded (context parallelism) against the dense reference.

A context shard runs ``flash_mixed_attention_bounds`` on its query rows against the
all-gathered keys; these tests check that call on a row slice (TPU and GPU kernels,
interpret mode), the block ranges it gets, and the full ``shard_map`` form on 8 fake
devices, forward and q / k / v gradients.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neo_jax.ops import attention as attention_lib
from neo_jax.ops import block_ranges as br
from neo_jax.ops import flash_mixed
from neo_jax.ops import flash_mixed_gpu
from testlib.attention import random_packed_ids

SCALE = 0.3


def _qkv(rng, batch, seq, hq, hkv, d):
  f = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return f(batch, seq, hq, 2 * d), f(batch, seq, hkv, 2 * d), f(batch, seq, hkv, d), \
      f(batch, seq, hq, d)


def _reference_rows(q, k, v, seg, unit, lo, hi):
  """Rows ``[lo, hi)`` of the dense reference, as a function of those rows' queries."""
  def fn(q_rows, k, v):
    q_all = q.at[:, lo:hi].set(q_rows)
    return attention_lib.reference_attention(q_all, k, v, seg, unit, scale=SCALE)[:, lo:hi]
  return fn


@pytest.mark.parametrize("kernel", ["tpu", "gpu"])
@pytest.mark.parametrize("lo,hi", [(0, 37), (37, 80), (48, 96)])
def test_kernel_on_a_row_slice_against_all_keys(kernel, lo, hi):
  """Rows [lo, hi) of a packed sequence against all 96 keys (a shard's call) == those
  rows of the reference: output and the q-rows / k / v gradients (dK / dV only hold
  these rows' contributions, which the all-gather's transpose sums over shards)."""
  rng = np.random.default_rng(lo * 7 + hi)
  seg, unit = map(jnp.asarray, random_packed_ids(rng, 2, 96))
  q, k, v, ct = _qkv(rng, 2, 96, 4, 2, 16)
  tb = br.token_bounds(seg, unit)
  rows = br.TokenBounds(tb.start[:, lo:hi], tb.limit[:, lo:hi])
  if kernel == "tpu":
    kern = functools.partial(flash_mixed.flash_mixed_attention_bounds, bounds=rows,
                             scale=SCALE, block_q=16, block_kv=32, block_q_bwd=32,
                             block_kv_bwd=16, interpret=True)
  else:
    kern = functools.partial(flash_mixed_gpu.flash_mixed_attention_gpu_bounds,
                             bounds=rows, scale=SCALE, block_q=16, block_kv=32,
                             interpret=True)
  ref = _reference_rows(q, k, v, seg, unit, lo, hi)
  ct_rows = ct[:, lo:hi]
  vg = lambda fn: jax.jit(jax.value_and_grad(
      lambda q, k, v: jnp.sum(fn(q, k, v) * ct_rows), argnums=(0, 1, 2)))(q[:, lo:hi], k, v)
  out = jax.jit(kern)(q[:, lo:hi], k, v)
  np.testing.assert_allclose(out, ref(q[:, lo:hi], k, v), atol=2e-5)
  (lk, gk), (lr, gr) = vg(kern), vg(ref)
  np.testing.assert_allclose(lk, lr, rtol=1e-5, atol=1e-4)
  for name, a, b in zip(("dq", "dk", "dv"), gk, gr):
    np.testing.assert_allclose(a, b, atol=2e-5, err_msg=name)


def test_a_shard_visits_no_kv_block_after_its_rows():
  """One causal text sample of 256 tokens, 4 shards of 64 rows, blocks of 32: shard c's
  q blocks 2c and 2c+1 visit kv blocks 0..2c and 0..2c+1 (their diagonal), so 4c + 3
  blocks; kv blocks after the shard are visited by no q block (empty mirror range)."""
  s, rows, blk = 256, 64, 32
  seg = jnp.ones((1, s), jnp.int32)
  unit = jnp.zeros((1, s), jnp.int32)
  tb = br.token_bounds(seg, unit)
  for c in range(4):
    part = br.TokenBounds(tb.start[:, c * rows:(c + 1) * rows],
                          tb.limit[:, c * rows:(c + 1) * rows])
    r = br.block_ranges(part, blk, blk, kv_len=s)
    np.testing.assert_array_equal(r.kv_lo, [0, 0])
    np.testing.assert_array_equal(r.kv_hi, [2 * c, 2 * c + 1])
    assert int(jnp.sum(r.kv_hi - r.kv_lo + 1)) == 4 * c + 3
    q_lo, q_hi = np.asarray(r.q_lo), np.asarray(r.q_hi)
    for j in range(s // blk):
      if j <= 2 * c:
        assert (q_lo[j], q_hi[j]) == (0, 1), j
      elif j == 2 * c + 1:
        assert (q_lo[j], q_hi[j]) == (1, 1), j
      else:
        assert q_hi[j] < q_lo[j], j


def test_block_ranges_reject_lengths_off_the_blocks():
  tb = br.TokenBounds(jnp.zeros((1, 32), jnp.int32), jnp.zeros((1, 32), jnp.int32))
  with pytest.raises(ValueError, match="key length 100"):
    br.block_ranges(tb, 16, 16, kv_len=100)


@pytest.mark.parametrize("mesh_shape,seq", [((2, 1, 1, 4), 128), ((1, 2, 2, 2), 100)])
def test_context_parallel_matches_reference_on_8_devices(mesh_shape, seq, devices8):
  """data x fsdp x tensor x context meshes on 8 fake devices: the shard_map'ed kernel
  (query rows per context shard, all-gathered k / v) == the dense reference, forward
  and gradients. seq 100 over 2 shards gives 50-row shards, padded inside to the
  block size."""
  mesh = jax.sharding.Mesh(devices8.reshape(mesh_shape), ("data", "fsdp", "tensor", "context"))
  rng = np.random.default_rng(seq)
  seg, unit = map(jnp.asarray, random_packed_ids(rng, 2, seq))
  q, k, v, ct = _qkv(rng, 2, seq, 4, 2, 16)
  kern = lambda q, k, v: attention_lib.context_parallel_flash_mixed_attention(
      mesh, q, k, v, seg, unit, batch_axes=("data", "fsdp"), head_axis="tensor",
      context_axes="context", scale=SCALE, block_q=16, block_kv=16)
  ref = lambda q, k, v: attention_lib.reference_attention(q, k, v, seg, unit, scale=SCALE)
  out = jax.jit(kern)(q, k, v)
  want = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(("data", "fsdp"), "context", "tensor", None))
  assert out.sharding.is_equivalent_to(want, 4), out.sharding
  np.testing.assert_allclose(out, ref(q, k, v), atol=2e-5)
  grad = lambda fn: jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * ct),
                                     argnums=(0, 1, 2)))(q, k, v)
  for name, a, b in zip(("dq", "dk", "dv"), grad(kern), grad(ref)):
    np.testing.assert_allclose(a, b, atol=2e-5, err_msg=name)


def test_context_parallel_rejects_a_sequence_off_the_axis():
  devices = np.array(jax.devices()[:4]).reshape(1, 1, 1, 4)
  mesh = jax.sharding.Mesh(devices, ("data", "fsdp", "tensor", "context"))
  x = jnp.zeros((1, 10, 2, 8))
  ids = jnp.ones((1, 10), jnp.int32)
  with pytest.raises(ValueError, match="not divisible by the context"):
    attention_lib.context_parallel_flash_mixed_attention(
        mesh, x, x, x[..., :4], ids, ids, scale=1.0, head_axis=None)


def test_kernel_on_two_ordered_chunks_of_rows():
  """Rows [0, 32) and [64, 96) together (the zigzag layout's shard 0 of 2 with chunks of
  32): intervals stay non-decreasing along the rows, so the kernel gives those rows of
  the reference, output and gradients."""
  rng = np.random.default_rng(21)
  seg, unit = map(jnp.asarray, random_packed_ids(rng, 2, 128))
  q, k, v, ct = _qkv(rng, 2, 128, 2, 1, 16)
  rows = np.r_[0:32, 64:96]
  tb = br.token_bounds(seg, unit)
  kern = functools.partial(flash_mixed.flash_mixed_attention_bounds,
                           bounds=br.TokenBounds(tb.start[:, rows], tb.limit[:, rows]),
                           scale=SCALE, block_q=16, block_kv=16, interpret=True)

  def ref(q_rows, k, v):
    q_all = q.at[:, rows].set(q_rows)
    return attention_lib.reference_attention(q_all, k, v, seg, unit, scale=SCALE)[:, rows]

  loss = lambda fn: jax.jit(jax.value_and_grad(
      lambda q, k, v: jnp.sum(fn(q, k, v) * ct[:, rows]), argnums=(0, 1, 2)))(q[:, rows], k, v)
  np.testing.assert_allclose(jax.jit(kern)(q[:, rows], k, v), ref(q[:, rows], k, v),
                             atol=2e-5)
  (lk, gk), (lr, gr) = loss(kern), loss(ref)
  np.testing.assert_allclose(lk, lr, rtol=1e-5, atol=1e-4)
  for name, a, b in zip(("dq", "dk", "dv"), gk, gr):
    np.testing.assert_allclose(a, b, atol=2e-5, err_msg=name)
