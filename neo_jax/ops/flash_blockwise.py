"""Block-sparse mixed-mask attention in plain JAX (``attention_impl="xla_blockwise"``).

The FlashAttention recipe (Dao 2023, Alg. 1 / 2) written with ``lax`` loops
instead of a Pallas kernel, so it compiles wherever XLA does (CPU, GPU, TPU) and
never holds a ``[S, S]`` array:

* forward: for each (batch row, q block) the loop visits only the kv blocks
  ``[kv_lo, kv_hi]`` of ``ops/block_ranges.py`` (the same blocks the Pallas
  kernel visits), keeping a float32 running max / sum / accumulator (online
  softmax); returns the output and the row logsumexp;
* backward (custom VJP): recomputes each visited block's probabilities from the
  logsumexp, in one pass per q block: dQ accumulates in the loop, dK / dV are
  added into their blocks of the full arrays (the loop is sequential, so no
  atomics); ``D_i = rowsum(dO * O)``.

GQA without repeating k / v: query heads are viewed as ``[Hkv, G]`` and each kv
head's block is contracted against its ``G`` query heads. Masking inside a
visited block uses the interval form (``start_i <= j <= limit_i``); masked
probabilities are zeroed explicitly, so a row whose first visited block holds no
visible key stays exact. Padding semantics equal the dense reference (a padding
row sees only itself).

Shapes and the custom-VJP plumbing (residual names for remat policies, padding of
rows and keys to whole blocks) are ``flash_common``'s, shared with the kernels.
"""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp

from neo_jax.ops import flash_common
from neo_jax.ops import block_ranges as br


# The largest float32 score array [bytes] the forward computes in one batched step when
# the sequence is one block (``_fwd_one_block``); above it, the per-row loop. Measured
# by ``bench/attention_one_block.py`` (BUILD_NOTES.md §0l): the forward alone is as fast
# or faster batched at every size measured (about 0.65x at 16-32 MiB), but with the
# backward that follows in training it is 1.1-2.4x slower from 8 MiB up. So a
# differentiated call (training) takes it only for small arrays, a primal one
# (``Config.primal``: prefill, scoring) up to the larger budget, which also bounds the
# memory it adds.
ONE_BLOCK_SCORE_BYTES = 2 << 20
ONE_BLOCK_SCORE_BYTES_PRIMAL = 32 << 20


def _visible(start, limit, j, block_kv):
  """``[bq, bkv] bool``: rows' intervals against kv block ``j``'s columns."""
  cols = j * block_kv + jnp.arange(block_kv, dtype=jnp.int32)
  return (cols[None, :] >= start[:, None]) & (cols[None, :] <= limit[:, None])


def _blocks(x, b, i, size):
  """``x[b, :, i*size:(i+1)*size]`` (``x`` is ``[B, H, S, D]``)."""
  return lax.dynamic_slice_in_dim(x[b], i * size, size, axis=1)


def _fwd_call(cfg, q, k, v, start, limit, r):
  """Forward over visited blocks; q ``[B, Hq, Sq, Dqk]``, k / v ``[B, Hkv, Sk, .]``.

  Returns ``(o [B, Hq, Sq, Dv] q.dtype, lse [B, Hq, Sq] float32)``."""
  b, hq, sq, dqk = q.shape
  hkv, dv = k.shape[1], v.shape[-1]
  g, bq, bkv = hq // hkv, cfg.block_q, cfg.block_kv
  nq = sq // bq
  budget = ONE_BLOCK_SCORE_BYTES_PRIMAL if cfg.primal else ONE_BLOCK_SCORE_BYTES
  if nq == 1 and k.shape[2] == bkv and b * hq * bq * bkv * 4 <= budget:
    return _fwd_one_block(cfg, q, k, v, start, limit)

  def one_q_block(t):
    bi, i = t // nq, t % nq
    qb = _blocks(q, bi, i, bq).reshape(hkv, g, bq, dqk)
    st = lax.dynamic_slice_in_dim(start[bi], i * bq, bq)
    lim = lax.dynamic_slice_in_dim(limit[bi], i * bq, bq)

    def body(j, carry):
      m, l, acc = carry
      s = jnp.einsum("hgqd,hkd->hgqk", qb, _blocks(k, bi, j, bkv),
                     preferred_element_type=jnp.float32) * cfg.scale
      vis = _visible(st, lim, j, bkv)
      s = jnp.where(vis, s, flash_common.MASK_VALUE)
      m_new = jnp.maximum(m, s.max(-1))
      p = jnp.where(vis, jnp.exp(s - m_new[..., None]), 0.0)
      alpha = jnp.exp(m - m_new)
      pv = jnp.einsum("hgqk,hkd->hgqd", p.astype(v.dtype), _blocks(v, bi, j, bkv),
                      preferred_element_type=jnp.float32)
      return m_new, alpha * l + p.sum(-1), alpha[..., None] * acc + pv

    init = (jnp.full((hkv, g, bq), -jnp.inf, jnp.float32), jnp.zeros((hkv, g, bq), jnp.float32),
            jnp.zeros((hkv, g, bq, dv), jnp.float32))
    m, l, acc = lax.fori_loop(r.kv_lo[t], r.kv_hi[t] + 1, body, init)
    o = (acc / l[..., None]).reshape(hq, bq, dv).astype(q.dtype)
    return o, (m + jnp.log(l)).reshape(hq, bq)

  o, lse = lax.map(one_q_block, jnp.arange(b * nq, dtype=jnp.int32))
  # [B * nq, Hq, bq, .] -> [B, Hq, Sq, .]
  o = o.reshape(b, nq, hq, bq, dv).transpose(0, 2, 1, 3, 4).reshape(b, hq, sq, dv)
  lse = lse.reshape(b, nq, hq, bq).transpose(0, 2, 1, 3).reshape(b, hq, sq)
  return o, lse


def _fwd_one_block(cfg, q, k, v, start, limit):
  """``_fwd_call`` when the sequence is one q block and one kv block (a short prompt,
  an evaluation row) and the batch's scores fit the budget: every row visits block 0
  (its own key at least), so the loops reduce to one batched step over all rows. The
  arithmetic is the loop's first visit (a running max from ``-inf``), without its
  per-row dispatch, which on XLA:CPU costs more than the arithmetic at ``S <= block``.
  Returns ``(o [B, Hq, Sq, Dv] q.dtype, lse [B, Hq, Sq] float32)``.
  """
  b, hq, sq, dqk = q.shape
  hkv, dv = k.shape[1], v.shape[-1]
  g = hq // hkv
  qb = q.reshape(b, hkv, g, sq, dqk)
  s = jnp.einsum("bhgqd,bhkd->bhgqk", qb, k, preferred_element_type=jnp.float32) * cfg.scale
  # [B, 1, 1, Sq, Sk]: each row's intervals against the one kv block (block 0).
  vis = jax.vmap(_visible, in_axes=(0, 0, None, None))(start, limit, 0, k.shape[2])
  vis = vis[:, None, None]
  s = jnp.where(vis, s, flash_common.MASK_VALUE)
  m = s.max(-1)
  p = jnp.where(vis, jnp.exp(s - m[..., None]), 0.0)
  l = p.sum(-1)
  acc = jnp.einsum("bhgqk,bhkd->bhgqd", p.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  o = (acc / l[..., None]).reshape(b, hq, sq, dv).astype(q.dtype)
  return o, (m + jnp.log(l)).reshape(b, hq, sq)


def _bwd_call(cfg, q, k, v, do, lse, di, start, limit, r):
  """dQ, dK, dV over the visited blocks (one pass per q block, Dao 2023 Alg. 2)."""
  b, hq, sq, dqk = q.shape
  hkv, sk, dv = k.shape[1], k.shape[2], v.shape[-1]
  g, bq, bkv = hq // hkv, cfg.block_q_bwd, cfg.block_kv_bwd
  nq = sq // bq

  # dK and dV contract the score block over its (group, query) rows. With the block
  # [h, g*q, k] as the right-hand side (contracting dimension major) and the small
  # transposed q / dO block [h, d, g*q] as the left (made once per q block), the GEMM
  # is the plain row-major one; dK^T / dV^T accumulate as [.., d, sk] and are transposed
  # once at the end. Contracting the score block as the left-hand side made XLA:CPU
  # write a transposed copy of it for every visited block (~7% of the benchmark step).
  def one_q_block(carry, t):
    dk_all, dv_all = carry
    bi, i = t // nq, t % nq
    qb = _blocks(q, bi, i, bq).reshape(hkv, g, bq, dqk)
    dob = _blocks(do, bi, i, bq).reshape(hkv, g, bq, dv)
    qb_t = qb.reshape(hkv, g * bq, dqk).transpose(0, 2, 1)
    dob_t = dob.reshape(hkv, g * bq, dv).transpose(0, 2, 1)
    lse_b = lax.dynamic_slice_in_dim(lse[bi], i * bq, bq, axis=1).reshape(hkv, g, bq)
    di_b = lax.dynamic_slice_in_dim(di[bi], i * bq, bq, axis=1).reshape(hkv, g, bq)
    st = lax.dynamic_slice_in_dim(start[bi], i * bq, bq)
    lim = lax.dynamic_slice_in_dim(limit[bi], i * bq, bq)

    def body(j, c):
      dq, dk_all, dv_all = c
      kb, vb = _blocks(k, bi, j, bkv), _blocks(v, bi, j, bkv)
      s = jnp.einsum("hgqd,hkd->hgqk", qb, kb, preferred_element_type=jnp.float32) * cfg.scale
      p = jnp.where(_visible(st, lim, j, bkv), jnp.exp(s - lse_b[..., None]), 0.0)
      dp = jnp.einsum("hgqd,hkd->hgqk", dob, vb, preferred_element_type=jnp.float32)
      ds = p * (dp - di_b[..., None]) * cfg.scale
      dq = dq + jnp.einsum("hgqk,hkd->hgqd", ds.astype(k.dtype), kb,
                           preferred_element_type=jnp.float32)
      dkb_t = jnp.einsum("hdx,hxk->hdk", qb_t, ds.astype(q.dtype).reshape(hkv, g * bq, bkv),
                         preferred_element_type=jnp.float32)
      dvb_t = jnp.einsum("hdx,hxk->hdk", dob_t, p.astype(do.dtype).reshape(hkv, g * bq, bkv),
                         preferred_element_type=jnp.float32)
      at = (bi, 0, 0, j * bkv)
      dk_all = lax.dynamic_update_slice(
          dk_all, lax.dynamic_slice(dk_all, at, (1, hkv, dqk, bkv)) + dkb_t[None], at)
      dv_all = lax.dynamic_update_slice(
          dv_all, lax.dynamic_slice(dv_all, at, (1, hkv, dv, bkv)) + dvb_t[None], at)
      return dq, dk_all, dv_all

    dq0 = jnp.zeros((hkv, g, bq, dqk), jnp.float32)
    dq, dk_all, dv_all = lax.fori_loop(r.kv_lo[t], r.kv_hi[t] + 1, body, (dq0, dk_all, dv_all))
    return (dk_all, dv_all), dq.reshape(hq, bq, dqk)

  init = (jnp.zeros((b, hkv, dqk, sk), jnp.float32), jnp.zeros((b, hkv, dv, sk), jnp.float32))
  (dk_t, dv_t), dq = lax.scan(one_q_block, init, jnp.arange(b * nq, dtype=jnp.int32))
  dk, dv_ = dk_t.transpose(0, 1, 3, 2), dv_t.transpose(0, 1, 3, 2)
  dq = dq.reshape(b, nq, hq, bq, dqk).transpose(0, 2, 1, 3, 4).reshape(b, hq, sq, dqk)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv_.astype(v.dtype)


_flash = flash_common.differentiable(_fwd_call, _bwd_call)


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array,
                        unit_ids: jax.Array, *, scale: float, block_q: int = 256,
                        block_kv: int = 256,
                        residual_names: tuple[str, str] = flash_common.DEFAULT_RESIDUAL_NAMES
                        ) -> jax.Array:
  """Mixed-mask attention, block-sparse, plain JAX (differentiable).

  Same contract as ``ops.reference.reference_attention`` (which it equals to
  float32 rounding) and ``flash_mixed.flash_mixed_attention``.

  Args:
    q: ``[B, S, Hq, Dqk]`` queries (float32 or bfloat16).
    k: ``[B, S, Hkv, Dqk]`` keys, ``Hq % Hkv == 0``.
    v: ``[B, S, Hkv, Dv]`` values.
    segment_ids: ``[B, S] int32`` packed-sample ids, each id one contiguous run,
      padding (0) last.
    unit_ids: ``[B, S] int32`` visual-unit ids (0 = non-visual), contiguous runs.
    scale: score multiplier (NEO: ``head_dim ** -0.5``, docs/design.md §1.2).
    block_q, block_kv: block sizes in tokens (``S`` is padded inside to whole blocks).
    residual_names: ``jax.checkpoint`` names of the saved output and logsumexp (the
      kernel's, so one remat policy covers both paths).

  Returns:
    ``[B, S, Hq, Dv]`` in ``q.dtype``; scores, softmax and accumulators float32.

  Raises:
    ValueError: incompatible shapes or non-positive block sizes.
  """
  b, s = q.shape[:2]
  if segment_ids.shape != (b, s) or unit_ids.shape != (b, s):
    raise ValueError(f"Incompatible shapes q{q.shape} segment_ids{segment_ids.shape} "
                     f"unit_ids{unit_ids.shape}.")
  bounds = br.token_bounds(segment_ids.astype(jnp.int32), unit_ids.astype(jnp.int32))
  return blockwise_attention_bounds(q, k, v, bounds, scale=scale, block_q=block_q,
                                    block_kv=block_kv, residual_names=residual_names)


def blockwise_attention_bounds(q: jax.Array, k: jax.Array, v: jax.Array,
                               bounds: br.TokenBounds, *, scale: float, block_q: int = 256,
                               block_kv: int = 256,
                               residual_names: tuple[str, str] = (
                                   flash_common.DEFAULT_RESIDUAL_NAMES)) -> jax.Array:
  """``blockwise_attention`` on query rows given by their visible key intervals.

  The form a context-parallel shard runs (its ``Sq`` rows against all ``Sk`` keys),
  as ``flash_mixed.flash_mixed_attention_bounds``.

  Args:
    q: ``[B, Sq, Hq, Dqk]``; k: ``[B, Sk, Hkv, Dqk]``; v: ``[B, Sk, Hkv, Dv]``.
    bounds: ``TokenBounds`` of ``[B, Sq] int32`` key positions in ``[0, Sk)``,
      ``start <= limit``, both non-decreasing along the rows.
    scale, block_q, block_kv, residual_names: as ``blockwise_attention``.

  Returns:
    ``[B, Sq, Hq, Dv]`` in ``q.dtype``.

  Raises:
    ValueError: incompatible shapes or non-positive block sizes.
  """
  flash_common.check_shapes(q, k, v, bounds)
  if min(block_q, block_kv) <= 0:
    raise ValueError(f"Block sizes must be positive, got {(block_q, block_kv)}.")
  # Blocks no larger than the (padded) sequence: short sequences need no padding.
  bq = min(block_q, -(-q.shape[1] // 8) * 8)
  bkv = min(block_kv, -(-k.shape[1] // 8) * 8)
  cfg = flash_common.Config(float(scale), bq, bkv, bq, bkv, q.shape[2] // k.shape[2],
                            False, tuple(residual_names))
  return flash_common.run_padded(_flash, cfg, q, k, v, bounds, q_multiple=bq, kv_multiple=bkv)
