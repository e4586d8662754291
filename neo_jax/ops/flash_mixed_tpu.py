"""Block-sparse flash attention for NEO's mixed mask: Pallas TPU (Mosaic) kernels.

The mask (NEO_SPEC §1.4), interval form (``ops/block_ranges.py``): ``start_i <= j <= limit_i``.

Design (after jax.experimental.pallas.ops.tpu.flash_attention and splash_attention):
* Three kernels: forward (online softmax, FlashAttention-2, Dao 2023, Alg. 1), dQ and
  dK/dV (Alg. 2 split in two passes, as in the JAX TPU flash attention), glued into
  one ``custom_vjp`` by ``flash_common.differentiable``.
* The grid's last axis walks "steps"; per q block the kv blocks visited are
  ``kv_lo + step`` for ``step <= kv_hi - kv_lo`` (per kv block, in dK/dV, the q blocks
  ``q_lo + step``). The ranges come by scalar prefetch (``block_ranges.py``). A step
  past the range runs no compute (``pl.when``) and its index map returns the last
  block of the range again, so the pipeline issues no new DMA.
* A (q, kv) block pair whose pairs are all visible runs without mask arithmetic.
* GQA: query head ``h`` reads kv head ``h // group`` through the index map (no repeated
  k / v in HBM); dK / dV accumulate over the group's query heads inside the kernel.
* Queries / keys are ``Dqk`` wide, values ``Dv`` wide (NEO: ``Dqk = 2 * Dv``).
* Layout ``[B, H, S, D]``; ``Sq`` query rows may face ``Sk`` keys (a context shard).
  The public entry point, with the backend choice, is ``ops/flash_mixed.py``.
"""

from __future__ import annotations

import functools
import math

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp

from neo_jax.ops import block_ranges as br
from neo_jax.ops import flash_common
from neo_jax.ops.flash_common import MASK_VALUE, Config

LANES = 128      # TPU lane width: per-row statistics in the forward are lane-broadcast.
SUBLANES = 8     # TPU sublanes: per-row vectors stored as rows are sublane-broadcast.
_NT = (((1,), (1,)), ((), ()))   # a @ b.T
_TN = (((0,), (0,)), ((), ()))   # a.T @ b


def _div(x, n: int):
  """``x // n`` for non-negative ints (``lax.div``: Mosaic lowers ``//`` via sign)."""
  return x if n == 1 else lax.div(x, n)


def _lanes(x):
  """``[B, S] -> [B, S, LANES]`` lane-broadcast (the forward reads column vectors)."""
  return jnp.broadcast_to(x[..., None], (*x.shape, LANES))


def _sublanes(x):
  """``[B, S] -> [B, SUBLANES, S]`` sublane-broadcast (the backward reads rows)."""
  return jnp.broadcast_to(x[:, None], (x.shape[0], SUBLANES, x.shape[1]))


def _visible(start_ref, limit_ref, j, bq, bk):
  """``[bq, bk] bool``: the interval mask of q rows vs the keys of kv block ``j``."""
  kpos = j * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
  return (kpos >= start_ref[:, :1]) & (kpos <= limit_ref[:, :1])


def _is_full(q_max_start, q_min_limit, j, bk):
  """Scalar bool: every row of the q block sees every key of kv block ``j``."""
  return (q_max_start <= j * bk) & (q_min_limit >= j * bk + bk - 1)


def _kv_step(kv_lo_ref, kv_hi_ref, nq):
  """Grid (b, h, q block, step) -> (step, flat q block, kv block visited, range end)."""
  b, i, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  blk = b * nq + i
  return t, blk, kv_lo_ref[blk] + t, kv_hi_ref[blk]


def _cost(b, h, sq, sk, bq, bk, *, matmul_width, streamed_bytes, fixed_bytes):
  """Static ``pl.CostEstimate`` for XLA's scheduler.

  The visited blocks depend on the data; the hint assumes a causal pattern (the blocks
  on and below the diagonal), the worst case of one sample per sequence without
  images (for a context shard, ``sq < sk``, the average shard). ``matmul_width``:
  sum of the contracted/produced widths of the block's matmuls; ``streamed_bytes``:
  bytes DMA'd per visited block; ``fixed_bytes``: once.
  """
  nq, nk = sq // bq, sk // bk
  n = max(nq, nk)
  blocks = b * h * nq * nk * (n + 1) // (2 * n)
  return pl.CostEstimate(flops=int(2 * bq * bk * matmul_width * blocks),
                         transcendentals=int(bq * bk * blocks),
                         bytes_accessed=int(blocks * streamed_bytes + fixed_bytes))


# ----------------------------------------------------------------------------- forward


def _fwd_kernel(kv_lo_ref, kv_hi_ref, qms_ref, qml_ref,            # scalar prefetch
                q_ref, k_ref, v_ref, start_ref, limit_ref,            # inputs
                o_ref, lse_ref,                                       # outputs
                m_sc, l_sc, acc_sc,                                   # scratch
                *, scale, bq, bk, nq):
  t, blk, j, hi = _kv_step(kv_lo_ref, kv_hi_ref, nq)

  @pl.when(t == 0)
  def _init():
    m_sc[...] = jnp.full_like(m_sc, MASK_VALUE)
    l_sc[...] = jnp.zeros_like(l_sc)
    acc_sc[...] = jnp.zeros_like(acc_sc)

  def step(masked):
    s = lax.dot_general(q_ref[...], k_ref[...], _NT,
                        preferred_element_type=jnp.float32) * scale
    if masked:
      vis = _visible(start_ref, limit_ref, j, bq, bk)
      s = jnp.where(vis, s, MASK_VALUE)
    m_prev = m_sc[...]                                   # [bq, LANES]
    m_next = jnp.maximum(m_prev, s.max(axis=-1, keepdims=True))
    p = jnp.exp(s - m_next[:, :1])
    if masked:
      p = jnp.where(vis, p, 0.0)
    alpha = jnp.exp(m_prev - m_next)
    l_sc[...] = alpha * l_sc[...] + p.sum(axis=-1, keepdims=True)
    m_sc[...] = m_next
    v = v_ref[...]
    acc_sc[...] = acc_sc[...] * alpha[:, :1] + jnp.dot(
        p.astype(v.dtype), v, preferred_element_type=jnp.float32)

  run = j <= hi
  full = _is_full(qms_ref[blk], qml_ref[blk], j, bk)
  pl.when(run & full)(lambda: step(False))
  pl.when(run & jnp.logical_not(full))(lambda: step(True))

  @pl.when(t == pl.num_programs(3) - 1)
  def _finish():
    l = l_sc[...]
    o_ref[...] = (acc_sc[...] / l[:, :1]).astype(o_ref.dtype)
    # Column -> row (a 2-D transpose) so the residual is [.., SUBLANES, S], not
    # [.., S, LANES]: 16x less HBM.
    lse_ref[...] = jnp.transpose(m_sc[...] + jnp.log(l))[:SUBLANES]


def _fwd(cfg: Config, q, k, v, start, limit, r: br.BlockRanges):
  """Forward kernel call. q ``[B,Hq,Sq,Dqk]``, k ``[B,Hkv,Sk,Dqk]``, v ``[B,Hkv,Sk,Dv]``,
  start / limit ``[B, Sq] int32``; returns ``(o, lse [B, Hq, Sq] float32)``."""
  b, hq, s, dqk = q.shape
  sk, dv = k.shape[2], v.shape[-1]
  bq, bk, g = cfg.block_q, cfg.block_kv, cfg.group
  nq, nk = s // bq, sk // bk

  def kv_block(b_, i, t, kv_lo, kv_hi):
    blk = b_ * nq + i
    return jnp.minimum(kv_lo[blk] + t, kv_hi[blk])

  q_map = lambda b_, h, i, t, *_: (b_, h, i, 0)
  q_map_t = lambda b_, h, i, t, *_: (b_, h, 0, i)
  kv_map = lambda b_, h, i, t, lo, hi, *_: (b_, _div(h, g), kv_block(b_, i, t, lo, hi), 0)
  row_map = lambda b_, h, i, t, *_: (b_, i, 0)
  kernel = functools.partial(_fwd_kernel, scale=cfg.scale, bq=bq, bk=bk, nq=nq)
  o, lse = pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=4,
          grid=(b, hq, nq, nk),
          in_specs=[
              pl.BlockSpec((None, None, bq, dqk), q_map),
              pl.BlockSpec((None, None, bk, dqk), kv_map),
              pl.BlockSpec((None, None, bk, dv), kv_map),
              pl.BlockSpec((None, bq, LANES), row_map),
              pl.BlockSpec((None, bq, LANES), row_map),
          ],
          out_specs=[
              pl.BlockSpec((None, None, bq, dv), q_map),
              pl.BlockSpec((None, None, SUBLANES, bq), q_map_t),
          ],
          scratch_shapes=[
              pltpu.VMEM((bq, LANES), jnp.float32),
              pltpu.VMEM((bq, LANES), jnp.float32),
              pltpu.VMEM((bq, dv), jnp.float32),
          ]),
      out_shape=[
          jax.ShapeDtypeStruct((b, hq, s, dv), q.dtype),
          jax.ShapeDtypeStruct((b, hq, SUBLANES, s), jnp.float32),
      ],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=cfg.interpret,
      cost_estimate=_cost(b, hq, s, sk, bq, bk, matmul_width=dqk + dv,
                          streamed_bytes=bk * (dqk + dv) * k.dtype.itemsize,
                          fixed_bytes=b * hq * s * (dqk + dv) * q.dtype.itemsize),
      name="flash_mixed_fwd",
  )(r.kv_lo, r.kv_hi, r.q_max_start, r.q_min_limit, q, k, v, _lanes(start), _lanes(limit))
  return o, lse[:, :, 0]


# ---------------------------------------------------------------------------- backward


# The backward kernels work on transposed scores ``s^T = k q^T`` (``[bk, bq]``): the
# per-row vectors (logsumexp, D_i, start, limit) are then rows ``[1, bq]``, read from
# ``[.., SUBLANES, S]`` arrays instead of lane-broadcast ``[.., S, LANES]`` ones.


def _visible_t(start_ref, limit_ref, j, bq, bk):
  """``[bk, bq] bool``: the interval mask, transposed (keys of block ``j`` x q rows)."""
  kpos = j * bk + lax.broadcasted_iota(jnp.int32, (bk, bq), 0)
  return (kpos >= start_ref[:1, :]) & (kpos <= limit_ref[:1, :])


def _probs_t(q, k_ref, v_ref, do, lse_ref, di_ref, start_ref, limit_ref, j, masked,
             *, scale, bq, bk):
  """``(p^T, ds^T)``, ``[bk, bq] float32`` each (Dao 2023, Alg. 2, lines 13-16)."""
  s = lax.dot_general(k_ref[...], q, _NT, preferred_element_type=jnp.float32) * scale
  p = jnp.exp(s - lse_ref[:1, :])
  if masked:
    p = jnp.where(_visible_t(start_ref, limit_ref, j, bq, bk), p, 0.0)
  dp = lax.dot_general(v_ref[...], do, _NT, preferred_element_type=jnp.float32)
  return p, p * (dp - di_ref[:1, :])


def _dq_kernel(kv_lo_ref, kv_hi_ref, qms_ref, qml_ref,
               q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref, start_ref, limit_ref,
               dq_ref, dq_sc, *, scale, bq, bk, nq):
  t, blk, j, hi = _kv_step(kv_lo_ref, kv_hi_ref, nq)

  @pl.when(t == 0)
  def _init():
    dq_sc[...] = jnp.zeros_like(dq_sc)

  def step(masked):
    k = k_ref[...]
    _, ds = _probs_t(q_ref[...], k_ref, v_ref, do_ref[...], lse_ref, di_ref,
                     start_ref, limit_ref, j, masked, scale=scale, bq=bq, bk=bk)
    dq_sc[...] += lax.dot_general(ds.astype(k.dtype), k, _TN,
                                  preferred_element_type=jnp.float32)

  run = j <= hi
  full = _is_full(qms_ref[blk], qml_ref[blk], j, bk)
  pl.when(run & full)(lambda: step(False))
  pl.when(run & jnp.logical_not(full))(lambda: step(True))

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

  run = i <= hi
  full = _is_full(qms_ref[blk], qml_ref[blk], j, bk)
  pl.when(run & full)(lambda: step(False))
  pl.when(run & jnp.logical_not(full))(lambda: step(True))

  @pl.when((gi == pl.num_programs(3) - 1) & (t == pl.num_programs(4) - 1))
  def _finish():
    dk_ref[...] = (dk_sc[...] * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _bwd_calls(cfg: Config, q, k, v, do, lse, di, start, limit, r: br.BlockRanges):
  """dQ and dK/dV kernel calls (block sizes ``block_*_bwd``; ``r`` made for them).

  ``q``, ``do``: ``[B, Hq, Sq, .]``; ``k``, ``v``: ``[B, Hkv, Sk, .]``; ``lse``,
  ``di``: ``[B, Hq, Sq] float32``; ``start``, ``limit``: ``[B, Sq] int32``.
  """
  b, hq, s, dqk = q.shape
  hkv, sk, dv = k.shape[1], k.shape[2], v.shape[-1]
  bq, bk, g = cfg.block_q_bwd, cfg.block_kv_bwd, cfg.group
  nq, nk = s // bq, sk // bk
  start_r, limit_r = _sublanes(start), _sublanes(limit)
  lse_r = jnp.broadcast_to(lse[:, :, None], (b, hq, SUBLANES, s))
  di_r = jnp.broadcast_to(di[:, :, None], (b, hq, SUBLANES, s))
  common = dict(scale=cfg.scale, bq=bq, bk=bk, nq=nq)

  def in_specs(q_map, kv_map, qt_map, row_map):
    """Both kernels read q, k, v, dO, lse, D_i, start, limit; only the maps differ."""
    return [pl.BlockSpec((None, None, bq, dqk), q_map),
            pl.BlockSpec((None, None, bk, dqk), kv_map),
            pl.BlockSpec((None, None, bk, dv), kv_map),
            pl.BlockSpec((None, None, bq, dv), q_map),
            pl.BlockSpec((None, None, SUBLANES, bq), qt_map),
            pl.BlockSpec((None, None, SUBLANES, bq), qt_map),
            pl.BlockSpec((None, SUBLANES, bq), row_map),
            pl.BlockSpec((None, SUBLANES, bq), row_map)]

  # dQ: grid (b, q head, q block, kv step), as the forward.
  def kv_block(b_, i, t, lo, hi):
    return jnp.minimum(lo[b_ * nq + i] + t, hi[b_ * nq + i])
  q_map = lambda b_, h, i, t, *_: (b_, h, i, 0)
  qt_map = lambda b_, h, i, t, *_: (b_, h, 0, i)
  kv_map = lambda b_, h, i, t, lo, hi, *_: (b_, _div(h, g), kv_block(b_, i, t, lo, hi), 0)
  row_map = lambda b_, h, i, t, *_: (b_, 0, i)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, **common),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=4,
          grid=(b, hq, nq, nk),
          in_specs=in_specs(q_map, kv_map, qt_map, row_map),
          out_specs=pl.BlockSpec((None, None, bq, dqk), q_map),
          scratch_shapes=[pltpu.VMEM((bq, dqk), jnp.float32)]),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=cfg.interpret,
      cost_estimate=_cost(b, hq, s, sk, bq, bk, matmul_width=2 * dqk + dv,
                          streamed_bytes=bk * (dqk + dv) * k.dtype.itemsize,
                          fixed_bytes=b * hq * s * (2 * dqk + dv) * q.dtype.itemsize),
      name="flash_mixed_dq",
  )(r.kv_lo, r.kv_hi, r.q_max_start, r.q_min_limit,
    q, k, v, do, lse_r, di_r, start_r, limit_r)

  # dK/dV: grid (b, kv head, kv block, query head in group, q step).
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
          grid=(b, hkv, nk, g, nq),
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
      cost_estimate=_cost(b, hq, s, sk, bq, bk, matmul_width=2 * (dqk + dv),
                          streamed_bytes=bq * (dqk + dv) * q.dtype.itemsize,
                          fixed_bytes=2 * b * hkv * sk * (dqk + dv) * k.dtype.itemsize),
      name="flash_mixed_dkv",
  )(r.q_lo, r.q_hi, r.q_max_start, r.q_min_limit,
    q, k, v, do, lse_r, di_r, start_r, limit_r)
  return dq, dk, dv_



_flash = flash_common.differentiable(_fwd, _bwd_calls)


def check_blocks(block_q: int, block_kv: int, block_q_bwd: int, block_kv_bwd: int) -> None:
  """Mosaic's tiling rules for these kernels.

  The q blocks are the lane dimension of the logsumexp / row-vector blocks
  (``[SUBLANES, block_q]``), so they must be multiples of 128; the kv blocks are
  the sublane dimension of the k / v blocks (``[block_kv, D]``): multiples of 8.

  Raises:
    ValueError: naming the offending field and the config field it comes from.
  """
  fields = (("block_q", block_q, LANES, "model.attention_block_q"),
            ("block_q_bwd", block_q_bwd, LANES, "the backward's, default model.attention_block_q"),
            ("block_kv", block_kv, SUBLANES, "model.attention_block_kv"),
            ("block_kv_bwd", block_kv_bwd, SUBLANES,
             "the backward's, default model.attention_block_kv"))
  for name, value, multiple, source in fields:
    if value <= 0 or value % multiple:
      raise ValueError(f"TPU kernel: {name}={value} ({source}) must be a positive multiple of "
                       f"{multiple}.")


def flash_mixed_attention_tpu_bounds(q: jax.Array, k: jax.Array, v: jax.Array,
                                     bounds: br.TokenBounds, cfg: Config) -> jax.Array:
  """The Mosaic kernels on ``[B, S, H, D]`` inputs (``interpret`` from ``cfg``).

  Args / returns: as ``flash_mixed.flash_mixed_attention_bounds``; ``cfg`` holds the
  scale, block sizes (q blocks multiples of 8 and 128, kv blocks of 8), GQA group.
  Rows are padded to a multiple of the q blocks, keys of the kv blocks.
  """
  return flash_common.run_padded(_flash, cfg, q, k, v, bounds,
                                 q_multiple=math.lcm(cfg.block_q, cfg.block_q_bwd),
                                 kv_multiple=math.lcm(cfg.block_kv, cfg.block_kv_bwd))
