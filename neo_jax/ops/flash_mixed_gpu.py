"""The mixed-mask flash attention on GPU: Pallas Triton kernels, fwd + bwd, block-sparse.

Same contract and block ranges as ``flash_mixed_tpu`` (the Mosaic kernels); the GPU has no
scalar prefetch and no pipelined grid, so each program loads its range bounds from
the ``BlockRanges`` arrays and loops (``lax.fori_loop`` with data-dependent bounds)
over exactly the blocks in range: an empty block is never loaded nor computed.
Differences from the TPU kernels: the mask is applied on every visited block (no
fully-visible shortcut), the logsumexp residual is ``[B, H, S]``, and block sizes
must be powers of two (Triton).

Status: checked in interpret mode on CPU (tests/test_flash_mixed.py); not run on a
GPU in this project yet (no GPU was lent to the session that wrote it).
"""

from __future__ import annotations

import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
import jax.numpy as jnp

from neo_jax.ops import block_ranges as br
from neo_jax.ops import flash_common

MASK_VALUE = flash_common.MASK_VALUE
_NT = (((1,), (1,)), ((), ()))
_TN = (((0,), (0,)), ((), ()))


def _mask(start, limit, j, bk):
  """``[bq, bk] bool`` from row bounds ``[bq]`` and kv block ``j``."""
  kpos = j * bk + lax.broadcasted_iota(jnp.int32, (start.shape[0], bk), 1)
  return (kpos >= start[:, None]) & (kpos <= limit[:, None])


def _fwd_kernel(kv_lo_ref, kv_hi_ref, q_ref, k_ref, v_ref, start_ref, limit_ref,
                o_ref, lse_ref, *, scale, bq, bk, nq, hq, g):
  i, bh = pl.program_id(0), pl.program_id(1)
  b = bh // hq
  blk = b * nq + i
  lo, hi = kv_lo_ref[blk], kv_hi_ref[blk]
  q = q_ref[...]
  start, limit = start_ref[...], limit_ref[...]
  dv = v_ref.shape[-1]

  def body(j, carry):
    m, l, acc = carry
    k = k_ref[pl.ds(j * bk, bk), :]
    v = v_ref[pl.ds(j * bk, bk), :]
    vis = _mask(start, limit, j, bk)
    s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * scale
    s = jnp.where(vis, s, MASK_VALUE)
    m_new = jnp.maximum(m, s.max(-1))
    p = jnp.where(vis, jnp.exp(s - m_new[:, None]), 0.0)
    alpha = jnp.exp(m - m_new)
    acc = acc * alpha[:, None] + jnp.dot(p.astype(v.dtype), v,
                                         preferred_element_type=jnp.float32)
    return m_new, l * alpha + p.sum(-1), acc

  init = (jnp.full((bq,), MASK_VALUE, jnp.float32), jnp.zeros((bq,), jnp.float32),
          jnp.zeros((bq, dv), jnp.float32))
  m, l, acc = lax.fori_loop(lo, hi + 1, body, init)
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log(l)


def _dq_kernel(kv_lo_ref, kv_hi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref,
               start_ref, limit_ref, dq_ref, *, scale, bq, bk, nq, hq, g):
  i, bh = pl.program_id(0), pl.program_id(1)
  blk = (bh // hq) * nq + i
  lo, hi = kv_lo_ref[blk], kv_hi_ref[blk]
  q, do, lse, di = q_ref[...], do_ref[...], lse_ref[...], di_ref[...]
  start, limit = start_ref[...], limit_ref[...]

  def body(j, dq):
    k = k_ref[pl.ds(j * bk, bk), :]
    v = v_ref[pl.ds(j * bk, bk), :]
    s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * scale
    p = jnp.where(_mask(start, limit, j, bk), jnp.exp(s - lse[:, None]), 0.0)
    dp = lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
    ds = p * (dp - di[:, None])
    return dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

  dq = lax.fori_loop(lo, hi + 1, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(q_lo_ref, q_hi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, di_ref,
                start_ref, limit_ref, dk_ref, dv_ref, *, scale, bq, bk, nk, hkv, g):
  j, bh = pl.program_id(0), pl.program_id(1)
  blk = (bh // hkv) * nk + j
  lo, hi = q_lo_ref[blk], q_hi_ref[blk]
  k, v = k_ref[...], v_ref[...]

  def body(t, carry):
    dk, dv = carry
    gi, i = t // (hi - lo + 1), lo + t % (hi - lo + 1)
    rows = pl.ds(i * bq, bq)
    q = q_ref[gi, rows, :]
    do = do_ref[gi, rows, :]
    lse, di = lse_ref[gi, rows], di_ref[gi, rows]
    s = lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32) * scale
    vis = _mask(start_ref[rows], limit_ref[rows], j, bk)
    p = jnp.where(vis, jnp.exp(s - lse[:, None]), 0.0)
    dv = dv + lax.dot_general(p.astype(do.dtype), do, _TN,
                              preferred_element_type=jnp.float32)
    dp = lax.dot_general(do, v, _NT, preferred_element_type=jnp.float32)
    ds = p * (dp - di[:, None])
    dk = dk + lax.dot_general(ds.astype(q.dtype), q, _TN,
                              preferred_element_type=jnp.float32)
    return dk, dv

  n = jnp.maximum(hi - lo + 1, 0) * g
  dk, dv = lax.fori_loop(0, n, body, (jnp.zeros(k.shape, jnp.float32),
                                      jnp.zeros(v.shape, jnp.float32)))
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _full(shape):
  """BlockSpec of a whole small array (block ranges)."""
  return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))


def _fwd(cfg, q, k, v, start, limit, r):
  b, hq, s, dqk = q.shape
  sk, dv = k.shape[2], v.shape[-1]
  bq, bk, g = cfg.block_q, cfg.block_kv, cfg.group
  nq = s // bq
  qmap = lambda i, bh: (bh // hq, bh % hq, i, 0)
  kvmap = lambda i, bh: (bh // hq, (bh % hq) // g, 0, 0)
  rowmap = lambda i, bh: (bh // hq, i)
  o, lse = pl.pallas_call(
      functools.partial(_fwd_kernel, scale=cfg.scale, bq=bq, bk=bk, nq=nq, hq=hq, g=g),
      grid=(nq, b * hq),
      in_specs=[_full(r.kv_lo.shape), _full(r.kv_hi.shape),
                pl.BlockSpec((None, None, bq, dqk), qmap),
                pl.BlockSpec((None, None, sk, dqk), kvmap),
                pl.BlockSpec((None, None, sk, dv), kvmap),
                pl.BlockSpec((None, bq), rowmap), pl.BlockSpec((None, bq), rowmap)],
      out_specs=[pl.BlockSpec((None, None, bq, dv), qmap),
                 pl.BlockSpec((None, None, bq), lambda i, bh: (bh // hq, bh % hq, i))],
      out_shape=[jax.ShapeDtypeStruct((b, hq, s, dv), q.dtype),
                 jax.ShapeDtypeStruct((b, hq, s), jnp.float32)],
      interpret=cfg.interpret, name="flash_mixed_gpu_fwd",
  )(r.kv_lo, r.kv_hi, q, k, v, start, limit)
  return o, lse


def _bwd(cfg, q, k, v, do, lse, di, start, limit, r):
  b, hq, s, dqk = q.shape
  hkv, sk, dv = k.shape[1], k.shape[2], v.shape[-1]
  bq, bk, g = cfg.block_q_bwd, cfg.block_kv_bwd, cfg.group
  nq, nk = s // bq, sk // bk
  qmap = lambda i, bh: (bh // hq, bh % hq, i, 0)
  qrow = lambda i, bh: (bh // hq, bh % hq, i)
  kvmap = lambda i, bh: (bh // hq, (bh % hq) // g, 0, 0)
  rowmap = lambda i, bh: (bh // hq, i)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, scale=cfg.scale, bq=bq, bk=bk, nq=nq, hq=hq, g=g),
      grid=(nq, b * hq),
      in_specs=[_full(r.kv_lo.shape), _full(r.kv_hi.shape),
                pl.BlockSpec((None, None, bq, dqk), qmap),
                pl.BlockSpec((None, None, sk, dqk), kvmap),
                pl.BlockSpec((None, None, sk, dv), kvmap),
                pl.BlockSpec((None, None, bq, dv), qmap),
                pl.BlockSpec((None, None, bq), qrow), pl.BlockSpec((None, None, bq), qrow),
                pl.BlockSpec((None, bq), rowmap), pl.BlockSpec((None, bq), rowmap)],
      out_specs=pl.BlockSpec((None, None, bq, dqk), qmap),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      interpret=cfg.interpret, name="flash_mixed_gpu_dq",
  )(r.kv_lo, r.kv_hi, q, k, v, do, lse, di, start, limit)

  # dK/dV: one program per (kv block, batch x kv head); the group's q heads in a loop.
  grp = lambda x: x.reshape(b, hkv, g, *x.shape[2:])
  kmap = lambda j, bh: (bh // hkv, bh % hkv, j, 0)
  gmap4 = lambda j, bh: (bh // hkv, bh % hkv, 0, 0, 0)
  gmap3 = lambda j, bh: (bh // hkv, bh % hkv, 0, 0)
  rows = lambda j, bh: (bh // hkv, 0)
  dk, dv_ = pl.pallas_call(
      functools.partial(_dkv_kernel, scale=cfg.scale, bq=bq, bk=bk, nk=nk, hkv=hkv,
                        g=g),
      grid=(nk, b * hkv),
      in_specs=[_full(r.q_lo.shape), _full(r.q_hi.shape),
                pl.BlockSpec((None, None, g, s, dqk), gmap4),
                pl.BlockSpec((None, None, bk, dqk), kmap),
                pl.BlockSpec((None, None, bk, dv), kmap),
                pl.BlockSpec((None, None, g, s, dv), gmap4),
                pl.BlockSpec((None, None, g, s), gmap3),
                pl.BlockSpec((None, None, g, s), gmap3),
                pl.BlockSpec((None, s), rows), pl.BlockSpec((None, s), rows)],
      out_specs=[pl.BlockSpec((None, None, bk, dqk), kmap),
                 pl.BlockSpec((None, None, bk, dv), kmap)],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype),
                 jax.ShapeDtypeStruct(v.shape, v.dtype)],
      interpret=cfg.interpret, name="flash_mixed_gpu_dkv",
  )(r.q_lo, r.q_hi, grp(q), k, v, grp(do), grp(lse), grp(di), start, limit)
  return dq, dk, dv_


_flash = flash_common.differentiable(_fwd, _bwd)


def flash_mixed_attention_gpu(q, k, v, segment_ids, unit_ids, *, scale: float,
                              block_q: int = 64, block_kv: int = 64,
                              residual_names: tuple[str, str] = flash_common.DEFAULT_RESIDUAL_NAMES,
                              interpret: bool = False) -> jax.Array:
  """Mixed-mask attention with Pallas Triton kernels (differentiable).

  Args / returns / raises: as ``flash_mixed.flash_mixed_attention``; block sizes
  are powers of two (default 64; q/k width 256 needs small blocks for shared
  memory). ``interpret=True`` runs the kernels on any backend (tests on CPU).
  """
  b, s = q.shape[:2]
  if k.shape[:2] != (b, s) or segment_ids.shape != (b, s) or unit_ids.shape != (b, s):
    raise ValueError(f"Incompatible shapes q{q.shape} k{k.shape} v{v.shape}.")
  bounds = br.token_bounds(segment_ids.astype(jnp.int32), unit_ids.astype(jnp.int32))
  return flash_mixed_attention_gpu_bounds(
      q, k, v, bounds, scale=scale, block_q=block_q, block_kv=block_kv,
      residual_names=residual_names, interpret=interpret)


def check_triton_config(block_q: int, block_kv: int, block_q_bwd: int, block_kv_bwd: int,
                        dqk: int, dv: int) -> None:
  """Triton's constraints for these kernels (checked before a GPU run).

  Block sizes and head widths are ``tl.arange`` extents: powers of two; ``tl.dot``
  needs every operand dimension >= 16.

  Raises:
    ValueError: naming the offending value.
  """
  for name, value in (("block_q", block_q), ("block_kv", block_kv),
                      ("block_q_bwd", block_q_bwd), ("block_kv_bwd", block_kv_bwd),
                      ("query/key width", dqk), ("value width", dv)):
    if value < 16 or value & (value - 1):
      raise ValueError(f"GPU (Triton) kernel: {name}={value} must be a power of two >= 16.")


def flash_mixed_attention_gpu_bounds(q, k, v, bounds: br.TokenBounds, *, scale: float,
                                     block_q: int = 64, block_kv: int = 64,
                                     block_q_bwd: int | None = None,
                                     block_kv_bwd: int | None = None,
                                     residual_names: tuple[str, str] = (
                                         flash_common.DEFAULT_RESIDUAL_NAMES),
                                     interpret: bool = False) -> jax.Array:
  """The Triton kernels on query rows given by their visible key intervals.

  Args / returns / raises: as ``flash_mixed.flash_mixed_attention_bounds`` (``q``
  ``[B, Sq, ...]`` against ``k`` / ``v`` ``[B, Sk, ...]``); block sizes powers of
  two (backward ones default to the forward's). Outside interpret mode the Triton
  constraints are checked (``check_triton_config``).
  """
  flash_common.check_shapes(q, k, v, bounds)
  hq, hkv = q.shape[2], k.shape[2]
  block_q_bwd = block_q_bwd or block_q
  block_kv_bwd = block_kv_bwd or block_kv
  for blk in (block_q, block_kv, block_q_bwd, block_kv_bwd):
    if blk <= 0 or blk & (blk - 1):
      raise ValueError(f"GPU block sizes must be powers of two, got {blk}.")
  if not interpret:
    check_triton_config(block_q, block_kv, block_q_bwd, block_kv_bwd, q.shape[-1], v.shape[-1])
  cfg = flash_common.Config(float(scale), block_q, block_kv, block_q_bwd, block_kv_bwd,
                            hq // hkv, bool(interpret), tuple(residual_names))
  return flash_common.run_padded(_flash, cfg, q, k, v, bounds,
                                 q_multiple=max(block_q, block_q_bwd),
                                 kv_multiple=max(block_kv, block_kv_bwd))
