"""Block-sparse flash attention for NEO's mixed mask: Pallas TPU kernels, fwd + bwd.

The mask (NEO_SPEC §1.4): causal across the packed sequence, bidirectional inside an
image / video frame, nothing across packed samples. In the interval form of
``ops/block_ranges.py`` query ``i`` sees key ``j`` iff ``start_i <= j <= limit_i``.

Design (after jax.experimental.pallas.ops.tpu.flash_attention and splash_attention):
* Three kernels: forward (online softmax, FlashAttention-2, Dao 2023, Alg. 1), dQ and
  dK/dV (Alg. 2 split in two passes, as in the JAX TPU flash attention). Residuals are
  the output and the row logsumexp; ``D_i = rowsum(dO * O)`` is computed in XLA.
* The grid's last axis walks "steps"; per q block the kv blocks visited are
  ``kv_lo + step`` for ``step <= kv_hi - kv_lo`` (per kv block, in dK/dV, the q blocks
  ``q_lo + step``). The ranges come by scalar prefetch (``block_ranges.py``). A step
  past the range runs no compute (``pl.when``) and its index map returns the last
  block of the range again, so the pipeline issues no new DMA.
* A (q, kv) block pair whose pairs are all visible runs without mask arithmetic.
* GQA: query head ``h`` reads kv head ``h // group`` through the index map (no repeated
  k / v in HBM); dK / dV accumulate over the group's query heads inside the kernel.
* Queries / keys are ``Dqk`` wide, values ``Dv`` wide (NEO: ``Dqk = 2 * Dv``).
* Layout inside: ``[B, H, S, D]`` (the wrapper transposes), sequence padded to a
  multiple of the block sizes; padded rows copy the last real row's interval, padded
  keys are never visible.
* On CPU the kernels run with ``interpret=True`` (chosen automatically). On GPU the
  entry point runs ``flash_mixed_gpu`` (see there).
* The query rows may be a slice of the sequence (``Sq`` rows with their intervals in
  the ``Sk`` key positions, ``flash_mixed_attention_bounds``): what a context-parallel
  shard runs against the all-gathered keys
  (``context_parallel_flash_mixed_attention``).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp

from neo_jax.ops import block_ranges as br

LANES = 128      # TPU lane width: per-row statistics in the forward are lane-broadcast.
SUBLANES = 8     # TPU sublanes: per-row vectors stored as rows are sublane-broadcast.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
_NT = (((1,), (1,)), ((), ()))   # a @ b.T
_TN = (((0,), (0,)), ((), ()))   # a.T @ b


@dataclasses.dataclass(frozen=True)
class Config:
  """Static kernel configuration (hashable: a custom_vjp non-diff argument).

  Attributes:
    scale: score multiplier.
    block_q, block_kv: forward block sizes in tokens.
    block_q_bwd, block_kv_bwd: block sizes of the dQ and dK/dV kernels.
    group: query heads per kv head.
    interpret: run the Pallas kernels in interpret mode.
    residual_names: ``jax.checkpoint`` names of the saved output and logsumexp.
  """
  scale: float
  block_q: int
  block_kv: int
  block_q_bwd: int
  block_kv_bwd: int
  group: int
  interpret: bool
  residual_names: tuple[str, str]


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
  b, i, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  blk = b * nq + i
  lo, hi = kv_lo_ref[blk], kv_hi_ref[blk]
  j = lo + t

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
  b, i, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  blk = b * nq + i
  lo, hi = kv_lo_ref[blk], kv_hi_ref[blk]
  j = lo + t

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


# -------------------------------------------------------------------------- custom_vjp


def differentiable(fwd_call, bwd_call):
  """``flash(cfg, q, k, v, start, limit)`` with a custom VJP made of kernel calls.

  Shared by the TPU kernels here and the Triton ones (``flash_mixed_gpu``). Residuals:
  q, k, v, start, limit, the output and the logsumexp (the last two under
  ``cfg.residual_names`` for ``jax.checkpoint`` policies); ``D_i = rowsum(dO * O)`` in
  XLA (Dao 2023, Alg. 2). Block ranges are computed for the forward and backward
  block sizes.

  Args:
    fwd_call: ``(cfg, q, k, v, start, limit, ranges) -> (o, lse)``; q ``[B, Hq, Sq, .]``,
      k / v ``[B, Hkv, Sk, .]``, start / limit ``[B, Sq] int32``.
    bwd_call: ``(cfg, q, k, v, do, lse, di, start, limit, ranges) -> (dq, dk, dv)``.

  Returns:
    The differentiable function (``cfg`` a static ``Config``).
  """
  @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
  def flash(cfg, q, k, v, start, limit):
    return fwd(cfg, q, k, v, start, limit)[0]

  def fwd(cfg, q, k, v, start, limit):
    r = br.block_ranges(br.TokenBounds(start, limit), cfg.block_q, cfg.block_kv,
                        kv_len=k.shape[2])
    o, lse = fwd_call(cfg, q, k, v, start, limit, r)
    o = checkpoint_name(o, cfg.residual_names[0])
    lse = checkpoint_name(lse, cfg.residual_names[1])
    return o, (q, k, v, start, limit, o, lse)

  def bwd(cfg, res, do):
    q, k, v, start, limit, o, lse = res
    r = br.block_ranges(br.TokenBounds(start, limit), cfg.block_q_bwd, cfg.block_kv_bwd,
                        kv_len=k.shape[2])
    di = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)
    dq, dk, dv = bwd_call(cfg, q, k, v, do, lse, di, start, limit, r)
    return dq, dk, dv, None, None

  flash.defvjp(fwd, bwd)
  return flash


_flash = differentiable(_fwd, _bwd_calls)


def flash_mixed_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          segment_ids: jax.Array, unit_ids: jax.Array, *,
                          scale: float, block_q: int = 512, block_kv: int = 512,
                          block_q_bwd: int | None = None,
                          block_kv_bwd: int | None = None,
                          residual_names: tuple[str, str] = ("flash_mixed_out",
                                                             "flash_mixed_lse"),
                          interpret: bool | None = None) -> jax.Array:
  """Mixed-mask attention with the block-sparse Pallas kernel (differentiable).

  Same contract as ``ops.attention.reference_attention``.

  Args:
    q: ``[B, S, Hq, Dqk]`` queries (float32 or bfloat16).
    k: ``[B, S, Hkv, Dqk]`` keys, ``Hq % Hkv == 0``; query head ``h`` uses kv head
      ``h // (Hq // Hkv)``.
    v: ``[B, S, Hkv, Dv]`` values (``Dv`` may differ from ``Dqk``).
    segment_ids: ``[B, S] int32`` packed-sample ids, each id one contiguous run,
      padding (0) last.
    unit_ids: ``[B, S] int32`` visual-unit ids (0 = non-visual), contiguous runs.
    scale: score multiplier (NEO: ``head_dim ** -0.5``, NEO_SPEC §1.2).
    block_q, block_kv: forward block sizes in tokens (TPU: multiples of 8 and 128;
      ``S`` is padded inside to a multiple of all block sizes).
    block_q_bwd, block_kv_bwd: backward block sizes (default: the forward ones).
    residual_names: ``jax.checkpoint`` names given to the saved output and
      logsumexp (``save_only_these_names`` policies can keep or drop them).
    interpret: run the Pallas TPU kernels in interpret mode; ``None`` = on the CPU
      backend. On the GPU backend ``flash_mixed_gpu`` runs instead.

  Returns:
    ``[B, S, Hq, Dv]`` in ``q.dtype``; scores and softmax in float32.

  Raises:
    ValueError: incompatible shapes or non-positive block sizes.
  """
  b, s = q.shape[:2]
  if k.shape[:2] != (b, s) or segment_ids.shape != (b, s) or unit_ids.shape != (b, s):
    raise ValueError(f"Incompatible shapes q{q.shape} k{k.shape} v{v.shape} "
                     f"segment_ids{segment_ids.shape} unit_ids{unit_ids.shape}.")
  bounds = br.token_bounds(segment_ids.astype(jnp.int32), unit_ids.astype(jnp.int32))
  return flash_mixed_attention_bounds(
      q, k, v, bounds, scale=scale, block_q=block_q, block_kv=block_kv,
      block_q_bwd=block_q_bwd, block_kv_bwd=block_kv_bwd,
      residual_names=residual_names, interpret=interpret)


def run_padded(flash, cfg: Config, q: jax.Array, k: jax.Array, v: jax.Array,
               bounds: br.TokenBounds, *, q_multiple: int, kv_multiple: int) -> jax.Array:
  """Runs ``flash`` (from ``differentiable``) in the kernels' layout.

  Transposes ``[B, S, H, D] -> [B, H, S, D]``, zero-pads the query rows to a multiple of
  ``q_multiple`` and the keys / values to one of ``kv_multiple``, pads the bounds by
  repeating the last row (``block_ranges.pad_bounds``: padded keys are never seen),
  and returns the real rows, ``[B, Sq, Hq, Dv]``.
  """
  sq, sk = q.shape[1], k.shape[1]
  q_pad = -(-sq // q_multiple) * q_multiple
  k_pad = -(-sk // kv_multiple) * kv_multiple

  def layout(x, n):
    x = jnp.swapaxes(x, 1, 2)
    return jnp.pad(x, ((0, 0), (0, 0), (0, n - x.shape[2]), (0, 0))) if n > x.shape[2] else x

  tb = br.pad_bounds(br.TokenBounds(bounds.start.astype(jnp.int32),
                                    bounds.limit.astype(jnp.int32)), q_pad)
  o = flash(cfg, layout(q, q_pad), layout(k, k_pad), layout(v, k_pad), tb.start, tb.limit)
  return jnp.swapaxes(o[:, :, :sq], 1, 2)


def flash_mixed_attention_bounds(q: jax.Array, k: jax.Array, v: jax.Array,
                                 bounds: br.TokenBounds, *, scale: float,
                                 block_q: int = 512, block_kv: int = 512,
                                 block_q_bwd: int | None = None,
                                 block_kv_bwd: int | None = None,
                                 residual_names: tuple[str, str] = ("flash_mixed_out",
                                                                    "flash_mixed_lse"),
                                 interpret: bool | None = None) -> jax.Array:
  """The kernel on query rows given by their visible key intervals (differentiable).

  The general form behind ``flash_mixed_attention``: query row ``i`` sees keys
  ``bounds.start[i] <= j <= bounds.limit[i]`` (``block_ranges.token_bounds``). The
  query rows may be any ``Sq`` consecutive rows of the sequence whose ``Sk`` keys are
  given, which is how a context-parallel shard runs it (its rows against the
  all-gathered keys; ``context_parallel_flash_mixed_attention``).

  Args:
    q: ``[B, Sq, Hq, Dqk]`` queries (float32 or bfloat16).
    k: ``[B, Sk, Hkv, Dqk]`` keys, ``Hq % Hkv == 0``.
    v: ``[B, Sk, Hkv, Dv]`` values.
    bounds: ``TokenBounds`` of ``[B, Sq] int32`` key positions in ``[0, Sk)``, each
      row's ``start <= limit``, both non-decreasing along the rows (true of
      consecutive rows of one packed sequence).
    scale, block_q, block_kv, block_q_bwd, block_kv_bwd, residual_names, interpret:
      as ``flash_mixed_attention``. Rows are padded to a multiple of the q blocks,
      keys to a multiple of the kv blocks.

  Returns:
    ``[B, Sq, Hq, Dv]`` in ``q.dtype``.

  Raises:
    ValueError: incompatible shapes or non-positive block sizes.
  """
  b, sq, hq, dqk = q.shape
  sk, hkv = k.shape[1], k.shape[2]
  if (hq % hkv or k.shape != (b, sk, hkv, dqk) or v.shape[:3] != (b, sk, hkv)
      or bounds.start.shape != (b, sq) or bounds.limit.shape != (b, sq)):
    raise ValueError(f"Incompatible shapes q{q.shape} k{k.shape} v{v.shape} "
                     f"bounds{bounds.start.shape}/{bounds.limit.shape}.")
  block_q_bwd = block_q_bwd or block_q
  block_kv_bwd = block_kv_bwd or block_kv
  blocks = (block_q, block_kv, block_q_bwd, block_kv_bwd)
  if min(blocks) <= 0:
    raise ValueError(f"Block sizes must be positive, got {blocks}.")
  if interpret is None:
    backend = jax.default_backend()
    if backend == "gpu":
      from neo_jax.ops import flash_mixed_gpu  # pylint: disable=g-import-not-at-top
      # Triton blocks live in shared memory: the TPU-sized defaults are capped.
      return flash_mixed_gpu.flash_mixed_attention_gpu_bounds(
          q, k, v, bounds, scale=scale, block_q=min(block_q, 64),
          block_kv=min(block_kv, 64), residual_names=residual_names)
    interpret = backend == "cpu"
  cfg = Config(float(scale), block_q, block_kv, block_q_bwd, block_kv_bwd, hq // hkv,
               bool(interpret), tuple(residual_names))
  return run_padded(_flash, cfg, q, k, v, bounds,
                    q_multiple=math.lcm(block_q, block_q_bwd),
                    kv_multiple=math.lcm(block_kv, block_kv_bwd))


def _axes_size(mesh, axes) -> int:
  """Product of the sizes of mesh ``axes`` (a name, a tuple of names or None)."""
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  return math.prod(mesh.shape[a] for a in axes)


def _check_heads(mesh, k, head_axis):
  if head_axis is not None and k.shape[2] % mesh.shape[head_axis]:
    raise ValueError(f"kv heads {k.shape[2]} not divisible by mesh axis "
                     f"{head_axis!r} of size {mesh.shape[head_axis]}.")


def sharded_flash_mixed_attention(mesh: jax.sharding.Mesh, q: jax.Array, k: jax.Array,
                                  v: jax.Array, segment_ids: jax.Array,
                                  unit_ids: jax.Array, *,
                                  batch_axes: tuple[str, ...] | str | None = ("data",
                                                                              "fsdp"),
                                  head_axis: str | None = "tensor",
                                  **kwargs) -> jax.Array:
  """``flash_mixed_attention`` under ``shard_map`` over batch and heads.

  Each device runs the kernel on its batch shard and its heads (query and kv heads
  split the same way, so a GQA group stays on one device). The sequence is not
  sharded (see ``context_parallel_flash_mixed_attention`` for that).

  Args:
    mesh: the device mesh.
    q, k, v, segment_ids, unit_ids: as ``flash_mixed_attention``; ``B`` divisible by
      the product of the batch axes, ``Hkv`` by the head axis size.
    batch_axes: mesh axes of the batch dimension (the ``activation_batch`` rule).
    head_axis: mesh axis of the head dimension (the ``heads`` rule), or None.
    **kwargs: forwarded to ``flash_mixed_attention`` (``scale`` required).

  Returns:
    ``[B, S, Hq, Dv]``, sharded like ``q``.

  Raises:
    ValueError: heads not divisible by the head axis size.
  """
  p = jax.sharding.PartitionSpec
  _check_heads(mesh, k, head_axis)
  qkv_spec = p(batch_axes, None, head_axis, None)
  ids_spec = p(batch_axes, None)
  fn = functools.partial(flash_mixed_attention, **kwargs)
  return jax.shard_map(fn, mesh=mesh,
                       in_specs=(qkv_spec, qkv_spec, qkv_spec, ids_spec, ids_spec),
                       out_specs=qkv_spec, check_vma=False)(
                           q, k, v, segment_ids, unit_ids)


def context_parallel_flash_mixed_attention(
    mesh: jax.sharding.Mesh, q: jax.Array, k: jax.Array, v: jax.Array,
    segment_ids: jax.Array, unit_ids: jax.Array, *,
    batch_axes: tuple[str, ...] | str | None = ("data", "fsdp"),
    head_axis: str | None = "tensor",
    context_axes: tuple[str, ...] | str = "context", **kwargs) -> jax.Array:
  """The kernel with the sequence sharded over ``context_axes`` (context parallelism).

  The all-gather form of context parallelism (as MaxText's default): device ``c``
  of ``C`` along the context axes holds query rows ``[c * S/C, (c + 1) * S/C)``; it
  all-gathers the keys, values and ids of the whole sequence, derives every row's
  visible key interval from the gathered ids (``block_ranges.token_bounds``), keeps
  its own rows' intervals and runs ``flash_mixed_attention_bounds`` on its rows
  against all keys. The kernel visits only the kv blocks its rows can see (for a
  causal layout, none after the shard). In the backward, the transpose of the
  all-gather reduce-scatters dK / dV back to the owning shards.

  Per device memory: the gathered keys / values ``B/D x S x Hkv/T x (Dqk + Dv)``
  (one layer at a time), the rest ``1/C`` of the unsharded kernel's.

  Args:
    mesh: the device mesh.
    q, k, v, segment_ids, unit_ids: as ``flash_mixed_attention``; ``B`` divisible by
      the batch axes' size, ``S`` by the context axes' size, ``Hkv`` by the head
      axis size.
    batch_axes: mesh axes of the batch dimension (``batch`` rule).
    head_axis: mesh axis of the heads (``heads`` rule), or None.
    context_axes: mesh axes of the sequence (``length`` rule).
    **kwargs: forwarded to ``flash_mixed_attention_bounds`` (``scale`` required).

  Returns:
    ``[B, S, Hq, Dv]``, sharded like ``q``.

  Raises:
    ValueError: heads or sequence not divisible by their mesh axes.
  """
  p = jax.sharding.PartitionSpec
  _check_heads(mesh, k, head_axis)
  n_ctx = _axes_size(mesh, context_axes)
  if q.shape[1] % n_ctx:
    raise ValueError(f"Sequence length {q.shape[1]} not divisible by the context "
                     f"axes {context_axes!r} of total size {n_ctx}.")
  qkv_spec = p(batch_axes, context_axes, head_axis, None)
  ids_spec = p(batch_axes, context_axes)

  def local(q, k, v, seg, unit):
    gather = functools.partial(lax.all_gather, axis_name=context_axes, axis=1,
                               tiled=True)
    k, v, seg, unit = gather(k), gather(v), gather(seg), gather(unit)
    tb = br.token_bounds(seg.astype(jnp.int32), unit.astype(jnp.int32))
    rows = q.shape[1]
    offset = lax.axis_index(context_axes) * rows
    mine = lambda x: lax.dynamic_slice_in_dim(x, offset, rows, axis=1)
    return flash_mixed_attention_bounds(
        q, k, v, br.TokenBounds(mine(tb.start), mine(tb.limit)), **kwargs)

  return jax.shard_map(local, mesh=mesh,
                       in_specs=(qkv_spec, qkv_spec, qkv_spec, ids_spec, ids_spec),
                       out_specs=qkv_spec, check_vma=False)(
                           q, k, v, segment_ids, unit_ids)
