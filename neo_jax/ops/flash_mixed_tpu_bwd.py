"""Backward of the mixed-mask flash attention: the Mosaic dQ and dK / dV kernels.

FlashAttention-2's backward (Dao 2023, Alg. 2) split in two passes as in the JAX TPU
flash attention: dQ walks the q-major schedule of visited (q block, kv block) pairs
(as the forward), dK / dV the kv-major one, accumulating over the GQA group's query
heads inside the kernel (``block_ranges.flat_schedule``; both lists have the static
length ``B * block_ranges.pair_bound`` and run exactly their real count of steps).
The forward and the entry point are in ``flash_mixed_tpu``.
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


def _dq_kernel(sched_ref, qms_ref, qml_ref,
               q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref, start_ref, limit_ref,
               dq_ref, dq_sc, *, scale, bq, bk, nq, nk):
  del nq
  p, j, first, last = tc.schedule_step(sched_ref, 1, nk)

  @pl.when(first)
  def _init():
    dq_sc[...] = jnp.zeros_like(dq_sc)

  def step(masked):
    k = k_ref[...]
    _, ds = _probs_t(q_ref[...], k_ref, v_ref, do_ref[...], lse_ref, di_ref,
                     start_ref, limit_ref, j, masked, scale=scale, bq=bq, bk=bk)
    dq_sc[...] += lax.dot_general(ds.astype(k.dtype), k, tc.TN,
                                  preferred_element_type=jnp.float32)

  tc.dispatch_step(step, tc.is_full(qms_ref[p], qml_ref[p], j, bk))

  @pl.when(last)
  def _finish():
    dq_ref[...] = (dq_sc[...] * scale).astype(dq_ref.dtype)


def _dkv_kernel(sched_ref, qms_ref, qml_ref,
                q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref, start_ref, limit_ref,
                dk_ref, dv_ref, dk_sc, dv_sc, *, scale, bq, bk, nq, nk, batch):
  pk, i, first, last = tc.schedule_step(sched_ref, 1, nq)
  gi = pl.program_id(2)
  b, j = tc.split(pk, nk, batch)
  p = b * nq + i

  @pl.when(first & (gi == 0))
  def _init():
    dk_sc[...] = jnp.zeros_like(dk_sc)
    dv_sc[...] = jnp.zeros_like(dv_sc)

  def step(masked):
    q, do = q_ref[...], do_ref[...]
    p_, ds = _probs_t(q, k_ref, v_ref, do, lse_ref, di_ref, start_ref, limit_ref, j,
                      masked, scale=scale, bq=bq, bk=bk)
    dv_sc[...] += jnp.dot(p_.astype(do.dtype), do, preferred_element_type=jnp.float32)
    dk_sc[...] += jnp.dot(ds.astype(q.dtype), q, preferred_element_type=jnp.float32)

  tc.dispatch_step(step, tc.is_full(qms_ref[p], qml_ref[p], j, bk))

  @pl.when(last & (gi == pl.num_programs(2) - 1))
  def _finish():
    dk_ref[...] = (dk_sc[...] * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _zero_unvisited(r: br.BlockRanges, bk: int, *arrays):
  """Zeros the kv blocks no q block visits (``[B, H, Sk, D]`` arrays).

  The dK / dV kernel writes only the kv blocks of its schedule. With the rows the
  whole sequence every real key is seen by its own row, so only blocks of padded keys
  (sliced off) go unwritten; a context shard's rows see a part of the keys and the
  other blocks must be zero, as megablox zeroes the groups its grid skips
  (``_zero_uninitialized_memory``).
  """
  b = arrays[0].shape[0]
  seen = (r.q_hi >= r.q_lo).reshape(b, -1)
  rows = jnp.repeat(seen, bk, axis=1, total_repeat_length=arrays[0].shape[2])
  return tuple(jnp.where(rows[:, None, :, None], a, jnp.zeros((), a.dtype)) for a in arrays)


def bwd_calls(cfg: Config, q, k, v, do, lse, di, start, limit, r: br.BlockRanges):
  """dQ and dK/dV kernel calls (block sizes ``block_*_bwd``; ``r`` made for them).

  ``q``, ``do``: ``[B, Hq, Sq, .]``; ``k``, ``v``: ``[B, Hkv, Sk, .]``; ``lse``,
  ``di``: ``[B, Hq, Sq] float32``; ``start``, ``limit``: ``[B, Sq] int32``. The
  schedules hold ``B * block_ranges.pair_bound(cfg.max_sample_tokens, ...)`` pairs; a
  batch with more makes the gradients NaN (``tc.poison_if_over``). Unless
  ``cfg.whole_sequence``, kv blocks the rows do not see get zero dK / dV.

  Returns:
    ``(dq, dk, dv)`` shaped and typed like ``q``, ``k``, ``v``.
  """
  b, hq, s, dqk = q.shape
  hkv, sk, dv = k.shape[1], k.shape[2], v.shape[-1]
  bq, bk, g = cfg.block_q_bwd, cfg.block_kv_bwd, cfg.group
  nq, nk = s // bq, sk // bk
  cap = tc.capacity(cfg.max_sample_tokens, b, bq, bk, nq, nk)
  by_q = br.flat_schedule(r.kv_lo, r.kv_hi, cap, nk)
  by_kv = br.flat_schedule(r.q_lo, r.q_hi, cap, nq)
  start_r, limit_r = tc.sublanes(start), tc.sublanes(limit)
  lse_r = jnp.broadcast_to(lse[:, :, None], (b, hq, tc.SUBLANES, s))
  di_r = jnp.broadcast_to(di[:, :, None], (b, hq, tc.SUBLANES, s))
  common = dict(scale=cfg.scale, bq=bq, bk=bk, nq=nq, nk=nk)

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

  # dQ: grid (q head, pair) over the q-major schedule, as the forward.
  def q_blocks(t, sched):
    """(batch row, q block, kv block) of step ``t``."""
    p, j = tc.unpack(sched, t, nk)
    return (*tc.split(p, nq, b), j)

  def q_map(h, t, sched, *_):
    b_, i, _ = q_blocks(t, sched)
    return b_, h, i, 0

  def qt_map(h, t, sched, *_):
    b_, i, _ = q_blocks(t, sched)
    return b_, h, 0, i

  def kv_map(h, t, sched, *_):
    b_, _, j = q_blocks(t, sched)
    return b_, tc.div(h, g), j, 0

  def row_map(h, t, sched, *_):
    b_, i, _ = q_blocks(t, sched)
    return b_, 0, i

  dq = pl.pallas_call(
      functools.partial(_dq_kernel, **common),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=3,
          grid=(hq, by_q.count),
          in_specs=in_specs(q_map, kv_map, qt_map, row_map),
          out_specs=pl.BlockSpec((None, None, bq, dqk), q_map),
          scratch_shapes=[pltpu.VMEM((bq, dqk), jnp.float32)]),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
      interpret=cfg.interpret,
      cost_estimate=tc.cost(b, hq, s, sk, bq, bk, matmul_width=2 * dqk + dv,
                            streamed_bytes=bk * (dqk + dv) * k.dtype.itemsize,
                            fixed_bytes=b * hq * s * (2 * dqk + dv) * q.dtype.itemsize,
                            max_blocks=hq * cap),
      name="flash_mixed_dq",
  )(tc.packed(by_q, nk), r.q_max_start, r.q_min_limit,
    q, k, v, do, lse_r, di_r, start_r, limit_r)

  # dK/dV: grid (kv head, pair, query head in the group) over the kv-major schedule.
  def kv_blocks(t, sched):
    """(batch row, kv block, q block) of step ``t``."""
    pk, i = tc.unpack(sched, t, nq)
    return (*tc.split(pk, nk, b), i)

  def qq_map(h, t, gi, sched, *_):
    b_, _, i = kv_blocks(t, sched)
    return b_, h * g + gi, i, 0

  def qqt_map(h, t, gi, sched, *_):
    b_, _, i = kv_blocks(t, sched)
    return b_, h * g + gi, 0, i

  def qrow_map(h, t, gi, sched, *_):
    b_, _, i = kv_blocks(t, sched)
    return b_, 0, i

  def k_map(h, t, gi, sched, *_):
    b_, j, _ = kv_blocks(t, sched)
    return b_, h, j, 0

  dk, dv_ = pl.pallas_call(
      functools.partial(_dkv_kernel, batch=b, **common),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=3,
          grid=(hkv, by_kv.count, g),
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
          dimension_semantics=("parallel", "arbitrary", "arbitrary")),
      interpret=cfg.interpret,
      cost_estimate=tc.cost(b, hq, s, sk, bq, bk, matmul_width=2 * (dqk + dv),
                            streamed_bytes=bq * (dqk + dv) * q.dtype.itemsize,
                            fixed_bytes=2 * b * hkv * sk * (dqk + dv) * k.dtype.itemsize,
                            max_blocks=hq * cap),
      name="flash_mixed_dkv",
  )(tc.packed(by_kv, nq), r.q_max_start, r.q_min_limit,
    q, k, v, do, lse_r, di_r, start_r, limit_r)
  if not cfg.whole_sequence:
    dk, dv_ = _zero_unvisited(r, bk, dk, dv_)
  dq, = tc.poison_if_over(by_q, dq)
  return (dq,) + tc.poison_if_over(by_kv, dk, dv_)
