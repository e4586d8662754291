"""The block-sparse mixed-mask kernel against the dense reference (interpret mode on CPU).

Also: the interval form and the block ranges against the dense mask, the shard_map
wrapper, checkpoint residual names, and AOT compilation for a TPU topology (libtpu).
"""

import functools
import re
import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neo_jax.ops import attention as attention_lib
from neo_jax.ops import block_ranges as br
from neo_jax.ops import flash_mixed
from neo_jax.ops import mask as mask_lib
from testlib.attention import (N_CASES, assert_close_to_reference, compare_fn, packed_case,
                               random_packed_ids)


@pytest.mark.parametrize("i", range(N_CASES))
def test_kernel_matches_reference(i):
  cfg, args = packed_case(i)
  assert_close_to_reference(cfg, *compare_fn("kernel", *cfg)(*args))


def test_interval_form_is_the_mixed_mask():
  rng = np.random.default_rng(7)
  for _ in range(20):
    seg, unit = random_packed_ids(rng, 2, 97)
    tb = br.token_bounds(jnp.asarray(seg), jnp.asarray(unit))
    j = np.arange(97)
    interval = (j[None, None] >= np.asarray(tb.start)[..., None]) & (
        j[None, None] <= np.asarray(tb.limit)[..., None])
    np.testing.assert_array_equal(interval, mask_lib.mixed_mask(seg, unit))


@pytest.mark.parametrize("bq,bk", [(16, 16), (16, 32), (32, 16)])
def test_block_ranges_visit_exactly_the_nonempty_blocks(bq, bk):
  rng = np.random.default_rng(bq + bk)
  for _ in range(10):
    seg, unit = random_packed_ids(rng, 2, 128)
    m = np.asarray(mask_lib.mixed_mask(seg, unit)).reshape(2, 128 // bq, bq, 128 // bk, bk)
    nonempty, full = m.any((2, 4)), m.all((2, 4))
    r = br.block_ranges(br.token_bounds(jnp.asarray(seg), jnp.asarray(unit)), bq, bk)
    nq, nk = 128 // bq, 128 // bk
    j = np.arange(nk)
    kv_lo, kv_hi = np.asarray(r.kv_lo).reshape(2, nq, 1), np.asarray(r.kv_hi).reshape(2, nq, 1)
    visited = (j >= kv_lo) & (j <= kv_hi)
    np.testing.assert_array_equal(visited, nonempty)
    # Mirror ranges: kv block j visited by q blocks q_lo..q_hi.
    i = np.arange(nq)
    q_lo, q_hi = np.asarray(r.q_lo).reshape(2, 1, nk), np.asarray(r.q_hi).reshape(2, 1, nk)
    np.testing.assert_array_equal((i[:, None] >= q_lo) & (i[:, None] <= q_hi), nonempty)
    # Full-block test used by the kernel.
    qms = np.asarray(r.q_max_start).reshape(2, nq, 1)
    qml = np.asarray(r.q_min_limit).reshape(2, nq, 1)
    np.testing.assert_array_equal((qms <= j * bk) & (qml >= j * bk + bk - 1), full)
    counts = br.block_counts(jnp.asarray(seg), jnp.asarray(unit), bq, bk)
    assert counts["visited"] == counts["nonempty"] == nonempty.sum()
    assert counts["full"] == full.sum()


def test_attention_dispatch_and_residual_names():
  rng = np.random.default_rng(5)
  seg, unit = map(jnp.asarray, random_packed_ids(rng, 1, 64))
  q = jnp.asarray(rng.normal(size=(1, 64, 2, 16)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 64, 1, 16)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(1, 64, 1, 8)), jnp.float32)
  ct = jnp.asarray(rng.normal(size=(1, 64, 2, 8)), jnp.float32)
  names = ("attn_o", "attn_lse")
  fn = lambda q: jnp.sum(flash_mixed.flash_mixed_attention(
      q, k, v, seg, unit, scale=0.25, block_q=32, block_kv=64,
      residual_names=names) * ct)
  policy = jax.checkpoint_policies.save_only_these_names(*names)
  g1 = jax.jit(jax.grad(jax.checkpoint(fn, policy=policy)))(q)
  g2 = jax.jit(jax.grad(fn))(q)
  np.testing.assert_allclose(g1, g2, atol=1e-6)
  jaxpr = str(jax.make_jaxpr(jax.grad(fn))(q))
  assert "attn_o" in jaxpr and "attn_lse" in jaxpr
  o1 = jax.jit(functools.partial(attention_lib.attention, scale=0.25, impl="pallas",
                                 block_q=32, block_kv=64))(q, k, v, seg, unit)
  o2 = attention_lib.attention(q, k, v, seg, unit, scale=0.25, impl="xla")
  np.testing.assert_allclose(o1, o2, atol=2e-5)


def test_separate_backward_blocks():
  _, (q, k, v, seg, unit, ct) = packed_case(3)
  def grads(**kw):
    fn = lambda q, k, v: jnp.sum(flash_mixed.flash_mixed_attention(
        q, k, v, seg, unit, scale=0.25, **kw) * ct)
    return jax.jit(jax.grad(fn, argnums=(0, 1, 2)))(q, k, v)
  ref = jax.grad(lambda q, k, v: jnp.sum(attention_lib.reference_attention(
      q, k, v, seg, unit, scale=0.25) * ct), argnums=(0, 1, 2))(q, k, v)
  got = grads(block_q=64, block_kv=32, block_q_bwd=32, block_kv_bwd=64)
  for a, b in zip(got, ref):
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_shard_map_over_batch_and_heads(devices8):
  devices = devices8
  mesh = jax.sharding.Mesh(devices.reshape(2, 1, 4), ("data", "fsdp", "tensor"))
  rng = np.random.default_rng(3)
  seg, unit = random_packed_ids(rng, 2, 96)
  q = jnp.asarray(rng.normal(size=(2, 96, 8, 16)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(2, 96, 4, 16)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(2, 96, 4, 8)), jnp.float32)
  fn = jax.jit(lambda q, k, v: attention_lib.sharded_flash_mixed_attention(
      mesh, q, k, v, jnp.asarray(seg), jnp.asarray(unit), batch_axes=("data", "fsdp"),
      head_axis="tensor", scale=0.3, block_q=32, block_kv=32))
  out = fn(q, k, v)
  ref = attention_lib.reference_attention(q, k, v, seg, unit, scale=0.3)
  np.testing.assert_allclose(out, ref, atol=2e-5)
  g = jax.grad(lambda q: jnp.sum(fn(q, k, v) ** 2))(q)
  g_ref = jax.grad(lambda q: jnp.sum(attention_lib.reference_attention(
      q, k, v, seg, unit, scale=0.3) ** 2))(q)
  np.testing.assert_allclose(g, g_ref, atol=2e-5)


# ------------------------------------------------------------------------------- AOT

_HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


def compile_for_tpu(topology: str, *, batch=1, seq=16384, heads=16, kv_heads=16,
                    head_dim=128, block=512, block_kv=None, max_sample_tokens=0):
  """AOT-compiles forward + backward of the kernel for one chip of ``topology``.

  Returns:
    The ``jax.stages.Compiled`` (``cost_analysis()``, ``memory_analysis()``).
  """
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  topo = topologies.get_topology_desc(topology, "tpu", chips_per_host_bounds=(1, 1, 1))
  sh = jax.sharding.SingleDeviceSharding(topo.devices[0])
  spec = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=sh)
  q = spec((batch, seq, heads, 2 * head_dim), jnp.bfloat16)
  k = spec((batch, seq, kv_heads, 2 * head_dim), jnp.bfloat16)
  v = spec((batch, seq, kv_heads, head_dim), jnp.bfloat16)
  ids = spec((batch, seq), jnp.int32)

  def loss(q, k, v, seg, unit):
    o = flash_mixed.flash_mixed_attention(q, k, v, seg, unit, scale=head_dim ** -0.5,
                                          block_q=block, block_kv=block_kv or block,
                                          interpret=False,
                                          max_sample_tokens=max_sample_tokens)
    return jnp.sum(o.astype(jnp.float32))

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(
      q, k, v, ids, ids).compile()


@pytest.mark.skipif(not _HAS_LIBTPU, reason="libtpu is not installed: no TPU compiler "
                    "for AOT (install the 'tpu' extra)")
@pytest.mark.parametrize("topology", ["v5p:1x1x1", "v6e:1x1"])
def test_aot_compile_tpu_fwd_bwd_16k(topology):
  t0 = time.time()
  compiled = compile_for_tpu(topology)
  assert compiled.memory_analysis() is not None
  text = compiled.as_text()
  for name in ("flash_mixed_fwd", "flash_mixed_dq", "flash_mixed_dkv"):
    assert name in text, name
  assert time.time() - t0 < 300


@pytest.mark.skipif(not _HAS_LIBTPU, reason="libtpu is not installed: no TPU compiler "
                    "for AOT (install the 'tpu' extra)")
def test_aot_compile_tpu_bounded_grid():
  """Mosaic lowers the kernels with the flattened schedule (a dynamic grid axis over a
  static list) and XLA's cost model sees the kernels' hints fall with the sample cap:
  16K tokens, blocks of 512, cap 2048 -> the schedule holds 32 * (1 + ceil(2047 / 512))
  + 31 = 191 pairs per head (uncapped: the causal hint's 528 of 1024)."""
  from neo_jax.ops import block_ranges as br  # pylint: disable=g-import-not-at-top
  assert br.pair_bound(2048, 512, 512, 32, 32) == 191
  assert br.pair_bound(0, 512, 512, 32, 32) == 1024
  flops = {}
  for cap in (0, 2048):
    compiled = compile_for_tpu("v5p:1x1x1", max_sample_tokens=cap)
    for name in ("flash_mixed_fwd", "flash_mixed_dq", "flash_mixed_dkv"):
      assert name in compiled.as_text(), name
    ca = compiled.cost_analysis()
    flops[cap] = (ca[0] if isinstance(ca, (list, tuple)) else ca)["flops"]
  # The kernels dominate the flops: they scale by 191 / 528 (+ the XLA glue's few).
  assert 0.33 < flops[2048] / flops[0] < 0.40, flops


def test_gpu_triton_kernels_interpret():
  """The GPU (Pallas Triton) kernels, in interpret mode: fwd and grads, GQA 2."""
  from neo_jax.ops import flash_mixed_gpu  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(11)
  seg, unit = map(jnp.asarray, random_packed_ids(rng, 1, 70))
  q = jnp.asarray(rng.normal(size=(1, 70, 2, 16)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 70, 1, 16)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(1, 70, 1, 8)), jnp.float32)
  ct = jnp.asarray(rng.normal(size=(1, 70, 2, 8)), jnp.float32)
  kern = lambda q, k, v: flash_mixed_gpu.flash_mixed_attention_gpu(
      q, k, v, seg, unit, scale=0.25, block_q=32, block_kv=16, interpret=True)
  ref = lambda q, k, v: attention_lib.reference_attention(q, k, v, seg, unit, scale=0.25)
  vg = lambda fn: jax.jit(jax.value_and_grad(
      lambda q, k, v: jnp.sum(fn(q, k, v) * ct), argnums=(0, 1, 2)))(q, k, v)
  (lk, gk), (lr, gr) = vg(kern), vg(ref)
  np.testing.assert_allclose(lk, lr, atol=2e-4)
  for a, b in zip(gk, gr):
    np.testing.assert_allclose(a, b, atol=2e-5)


@pytest.mark.skipif(not _HAS_LIBTPU, reason="libtpu is not installed: no TPU compiler "
                    "for AOT (install the 'tpu' extra)")
def test_aot_compile_tpu_non_default_valid_blocks():
  """block_q 256 (a multiple of 128) with block_kv 136 (a multiple of 8, not of 128)."""
  compiled = compile_for_tpu("v5p:1x1x1", seq=2176, heads=4, kv_heads=2, block=256,
                             block_kv=136)
  text = compiled.as_text()
  for name in ("flash_mixed_fwd", "flash_mixed_dq", "flash_mixed_dkv"):
    assert name in text, name


@pytest.mark.parametrize("blocks,field", [((64, 128), "block_q=64 (model.attention_block_q)"),
                                          ((256, 12), "block_kv=12 (model.attention_block_kv)")])
def test_mosaic_block_sizes_are_checked_naming_the_field(blocks, field):
  x = jax.ShapeDtypeStruct((1, 256, 2, 32), jnp.float32)
  ids = jax.ShapeDtypeStruct((1, 256), jnp.int32)
  fn = lambda q, k, v, s, u: flash_mixed.flash_mixed_attention(
      q, k, v, s, u, scale=0.2, block_q=blocks[0], block_kv=blocks[1], interpret=False)
  with pytest.raises(ValueError, match=re.escape(field)):
    jax.eval_shape(fn, x, x, x, ids, ids)
  # The interpreter (CPU tests) takes any block size.
  jax.eval_shape(lambda *a: flash_mixed.flash_mixed_attention(
      *a, scale=0.2, block_q=blocks[0], block_kv=blocks[1], interpret=True), x, x, x, ids, ids)


def test_auto_on_gpu_runs_blockwise_and_says_so(caplog):
  from neo_jax.ops import backend  # pylint: disable=g-import-not-at-top
  backend._warn_gpu_auto.cache_clear()
  with caplog.at_level("WARNING"):
    assert backend.resolve_attention_impl("auto", "gpu") == "xla_blockwise"
  assert "Triton kernel has not been run on a GPU" in caplog.text
  assert backend.resolve_attention_impl("auto", "tpu") == "pallas"
  assert backend.resolve_attention_impl("pallas", "gpu") == "pallas"
  assert backend.kernel_backend("gpu") == "triton"


def test_triton_constraints_and_backward_blocks_reach_the_gpu_kernels(monkeypatch):
  from neo_jax.ops import flash_mixed_gpu  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="block_kv=48"):
    flash_mixed_gpu.check_triton_config(64, 48, 64, 64, 32, 16)
  with pytest.raises(ValueError, match="value width=8"):
    flash_mixed_gpu.check_triton_config(64, 64, 64, 64, 32, 8)
  flash_mixed_gpu.check_triton_config(16, 64, 32, 16, 256, 128)
  seen = {}
  def spy(q, k, v, bounds, **kw):
    seen.update(kw)
    return jnp.zeros(q.shape[:3] + v.shape[-1:], q.dtype)
  monkeypatch.setattr(flash_mixed_gpu, "flash_mixed_attention_gpu_bounds", spy)
  x = jnp.zeros((1, 64, 2, 32))
  ids = jnp.ones((1, 64), jnp.int32)
  flash_mixed.flash_mixed_attention(x, x, x, ids, ids, scale=0.2, block_q=512, block_kv=128,
                                    block_q_bwd=32, block_kv_bwd=16, platform="gpu")
  assert (seen["block_q"], seen["block_kv"], seen["block_q_bwd"], seen["block_kv_bwd"]) == (
      64, 64, 32, 16)
