"""Backward of the mixed-mask flash attention: the Mosaic dQ and dK / dV kernels.

FlashAttention-2's backward (Dao 2023, Alg. 2) split in two passes as in the JAX TPU
flash attention: dQ walks each q block's kv range (``kv_lo + step``), dK / dV each kv
block's q range (``q_lo + step``), accumulating over the GQA group's query heads
inside the kernel. The step axes are bounded by ``Config.max_sample_tokens``. The
forward and the entry point are in ``flash_mixed_tpu``.
"""

from __future__ import annotations

import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp

from neo_jax.ops import block_ranges as br
from neo_jax.ops import flash_mixed_tpu_common as tc
from neo_jax.ops.flash_common import Config

# The backward kernels work on transposed scores ``s^T = k q^T`` (``[bk, bq]``): the
# per-row vectors (logsumexp, D_i, start, limit) are then rows ``[1, bq]``, read from
# ``[.., tc.SUBLANES, S]`` arrays instead of lane-broadcast ``[.., S, LANES]`` ones.


def _visible_t(start_ref, limit_ref, j, bq, bk):
  """``[bk, bq] bool``: the interval mask, transposed (keys of block ``j`` x q rows)."""
  kpos = j * bk + lax.broadcasted_iota(jnp.int32, (bk, bq), 0)
  return (kpos >= start_ref[:1, :]) & (kpos <= limit_ref[:1, :])


def _probs_t(q, k_ref, v_ref, do, lse_ref, di_ref, start_ref, limit_ref, j, masked,
             *, scale, bq, bk):
  """``(p^T, ds^T)``, ``[bk, bq] float32`` each (Dao 2023, Alg. 2, lines 13-16)."""
  s = lax.dot_general(k_ref[...], q, tc.NT, preferred_element_type=jnp.float32) * scale
  p = jnp.exp(s - lse_ref[:1, :])
  if masked:
    p = jnp.where(_visible_t(start_ref, limit_ref, j, bq, bk), p, 0.0)
  dp = lax.dot_general(v_ref[...], do, tc.NT, preferred_element_type=jnp.float32)
  return p, p * (dp - di_ref[:1, :])


def _dq_kernel(kv_lo_ref, kv_hi_ref, qms_ref, qml_ref,
               q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref, start_ref, limit_ref,
               dq_ref, dq_sc, *, scale, bq, bk, nq):
  t, blk, j, hi = tc.kv_step(kv_lo_ref, kv_hi_ref, nq)

  @pl.when(t == 0)
  def _init():
    dq_sc[...] = jnp.zeros_like(dq_sc)

  def step(masked):
    k = k_ref[...]
    _, ds = _probs_t(q_ref[...], k_ref, v_ref, do_ref[...], lse_ref, di_ref,
                     start_ref, limit_ref, j, masked, scale=scale, bq=bq, bk=bk)
    dq_sc[...] += lax.dot_general(ds.astype(k.dtype), k, tc.TN,
                                  preferred_element_type=jnp.float32)

  tc.dispatch_step(step, j <= hi, tc.is_full(qms_ref[blk], qml_ref[blk], j, bk))

  @pl.when(t == pl.num_programs(3) - 1)
  def _finish():
    dq_ref[...] = (dq_sc[...] * scale).astype(dq_ref.dtype)


def _dkv_kernel(q_lo_ref, q_hi_ref, qms_ref, qml_ref,
                q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref, start_ref, limit_ref,
                dk_ref, dv_ref, dk_sc, dv_sc, *, scale, bq, bk, nq, nk):
  b, j, gi, t = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)
  lo, hi = q_lo_ref[b * nk + j], q_hi_ref[b * nk + j]
  i = lo + t
  blk = b * nq + jnp.clip(i, 0, nq - 1)

  @pl.when((gi == 0) & (t == 0))
  def _init():
    dk_sc[...] = jnp.zeros_like(dk_sc)
    dv_sc[...] = jnp.zeros_like(dv_sc)

  def step(masked):
    q, do = q_ref[...], do_ref[...]
    p, ds = _probs_t(q, k_ref, v_ref, do, lse_ref, di_ref, start_ref, limit_ref, j,
                     masked, scale=scale, bq=bq, bk=bk)
    dv_sc[...] += jnp.dot(p.astype(do.dtype), do, preferred_element_type=jnp.float32)
    dk_sc[...] += jnp.dot(ds.astype(q.dtype), q, preferred_element_type=jnp.float32)

  tc.dispatch_step(step, i <= hi, tc.is_full(qms_ref[blk], qml_ref[blk], j, bk))

  @pl.when((gi == pl.num_programs(3) - 1) & (t == pl.num_programs(4) - 1))
  def _finish():
    dk_ref[...] = (dk_sc[...] * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def bwd_calls(cfg: Config, q, k, v, do, lse, di, start, limit, r: br.BlockRanges):
  """dQ and dK/dV kernel calls (block sizes ``block_*_bwd``; ``r`` made for them).

  ``q``, ``do``: ``[B, Hq, Sq, .]``; ``k``, ``v``: ``[B, Hkv, Sk, .]``; ``lse``,
  ``di``: ``[B, Hq, Sq] float32``; ``start``, ``limit``: ``[B, Sq] int32``. The grids'
  step axes are bounded by ``cfg.max_sample_tokens`` (``block_ranges.kv_step_bound``,
  ``q_step_bound``); a wider range makes the gradients NaN (``tc.poison_if_wider``).

  Returns:
    ``(dq, dk, dv)`` shaped and typed like ``q``, ``k``, ``v``.
  """
  b, hq, s, dqk = q.shape
  hkv, sk, dv = k.shape[1], k.shape[2], v.shape[-1]
  bq, bk, g = cfg.block_q_bwd, cfg.block_kv_bwd, cfg.group
  nq, nk = s // bq, sk // bk
  kv_steps = br.kv_step_bound(cfg.max_sample_tokens, bq, bk, nk)
  q_steps = br.q_step_bound(cfg.max_sample_tokens, bq, bk, nq)
  start_r, limit_r = tc.sublanes(start), tc.sublanes(limit)
  lse_r = jnp.broadcast_to(lse[:, :, None], (b, hq, tc.SUBLANES, s))
  di_r = jnp.broadcast_to(di[:, :, None], (b, hq, tc.SUBLANES, s))
  common = dict(scale=cfg.scale, bq=bq, bk=bk, nq=nq)

  def in_specs(q_map, kv_map, qt_map, row_map):
    """Both kernels read q, k, v, dO, lse, D_i, start, limit; only the maps differ."""
    return [pl.BlockSpec((None, None, bq, dqk), q_map),
            pl.BlockSpec((None, None, bk, dqk), kv_map),
            pl.BlockSpec((None, None, bk, dv), kv_map),
            pl.BlockSpec((None, None, bq, dv), q_map),
            pl.BlockSpec((None, None, tc.SUBLANES, bq), qt_map),
            pl.BlockSpec((None, None, tc.SUBLANES, bq), qt_map),
            pl.BlockSpec((None, tc.SUBLANES, bq), row_map),
            pl.BlockSpec((None, tc.SUBLANES, bq), row_map)]

  # dQ: grid (b, q head, q block, kv step), as the forward, over kv_steps steps.
  def kv_block(b_, i, t, lo, hi):
    return jnp.minimum(lo[b_ * nq + i] + t, hi[b_ * nq + i])
  q_map = lambda b_, h, i, t, *_: (b_, h, i, 0)
  qt_map = lambda b_, h, i, t, *_: (b_, h, 0, i)
  kv_map = lambda b_, h, i, t, lo, hi, *_: (b_, tc.div(h, g), kv_block(b_, i, t, lo, hi), 0)
  row_map = lambda b_, h, i, t, *_: (b_, 0, i)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, **common),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=4,
          grid=(b, hq, nq, kv_steps),
          in_specs=in_specs(q_map, kv_map, qt_map, row_map),
          out_specs=pl.BlockSpec((None, None, bq, dqk), q_map),
          scratch_shapes=[pltpu.VMEM((bq, dqk), jnp.float32)]),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=cfg.interpret,
      cost_estimate=tc.cost(b, hq, s, sk, bq, bk, matmul_width=2 * dqk + dv,
                            streamed_bytes=bk * (dqk + dv) * k.dtype.itemsize,
                            fixed_bytes=b * hq * s * (2 * dqk + dv) * q.dtype.itemsize,
                            max_blocks=b * hq * nq * kv_steps),
      name="flash_mixed_dq",
  )(r.kv_lo, r.kv_hi, r.q_max_start, r.q_min_limit,
    q, k, v, do, lse_r, di_r, start_r, limit_r)

  # dK/dV: grid (b, kv head, kv block, query head in group, q step), q_steps steps.
  def q_block(b_, j, t, lo, hi):
    lo_, hi_ = lo[b_ * nk + j], hi[b_ * nk + j]
    return jnp.minimum(lo_ + t, jnp.maximum(hi_, lo_))
  qq_map = lambda b_, h, j, gi, t, lo, hi, *_: (
      b_, h * g + gi, q_block(b_, j, t, lo, hi), 0)
  qqt_map = lambda b_, h, j, gi, t, lo, hi, *_: (
      b_, h * g + gi, 0, q_block(b_, j, t, lo, hi))
  qrow_map = lambda b_, h, j, gi, t, lo, hi, *_: (b_, 0, q_block(b_, j, t, lo, hi))
  k_map = lambda b_, h, j, gi, t, *_: (b_, h, j, 0)
  dk, dv_ = pl.pallas_call(
      functools.partial(_dkv_kernel, nk=nk, **common),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=4,
          grid=(b, hkv, nk, g, q_steps),
          in_specs=in_specs(qq_map, k_map, qqt_map, qrow_map),
          out_specs=[
              pl.BlockSpec((None, None, bk, dqk), k_map),
              pl.BlockSpec((None, None, bk, dv), k_map),
          ],
          scratch_shapes=[pltpu.VMEM((bk, dqk), jnp.float32),
                          pltpu.VMEM((bk, dv), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype),
                 jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary",
                               "arbitrary")),
      interpret=cfg.interpret,
      cost_estimate=tc.cost(b, hq, s, sk, bq, bk, matmul_width=2 * (dqk + dv),
                            streamed_bytes=bq * (dqk + dv) * q.dtype.itemsize,
                            fixed_bytes=2 * b * hkv * sk * (dqk + dv) * k.dtype.itemsize,
                            max_blocks=b * hq * nk * q_steps),
      name="flash_mixed_dkv",
  )(r.q_lo, r.q_hi, r.q_max_start, r.q_min_limit,
    q, k, v, do, lse_r, di_r, start_r, limit_r)
  dq, = tc.poison_if_wider(r.kv_lo, r.kv_hi, kv_steps, dq)
  return (dq,) + tc.poison_if_wider(r.q_lo, r.q_hi, q_steps, dk, dv_)
