"""Block-sparse flash attention for NEO's mixed mask: Pallas TPU (Mosaic) kernels.

The mask (docs/design.md §1.4), interval form (``ops/block_ranges.py``): ``start_i <= j <= limit_i``.

Design (after jax.experimental.pallas.ops.tpu.flash_attention and splash_attention):
* Three kernels: forward (online softmax, FlashAttention-2, Dao 2023, Alg. 1), dQ and
  dK/dV (Alg. 2 split in two passes, as in the JAX TPU flash attention), glued into
  one ``custom_vjp`` by ``flash_common.differentiable``.
* The grid walks a flattened schedule of exactly the visited (q block, kv block)
  pairs (``block_ranges.flat_schedule``, the megablox ``gmm`` recipe): forward and dQ
  go q-major (grid: query head, pair), dK / dV kv-major (grid: kv head, pair, query
  head of the GQA group). The list comes by scalar prefetch; its static length is
  ``B * block_ranges.pair_bound`` (the sample cap ``Config.max_sample_tokens`` bounds
  it; ``nq * nk`` per row without a cap) and the pair axis is a dynamic grid
  dimension of the real count, so no grid step is empty. An accumulator starts at
  the first pair of its output block and is written at the last (the output block
  index changes along the axis). A batch with more pairs than the capacity (a sample
  longer than the cap) gets NaN, never a result with blocks missing.
* Padding rows see their diagonal only.
* A (q, kv) block pair whose pairs are all visible runs without mask arithmetic.
* GQA: query head ``h`` reads kv head ``h // group`` through the index map (no repeated
  k / v in HBM); dK / dV accumulate over the group's query heads inside the kernel.
* Queries / keys are ``Dqk`` wide, values ``Dv`` wide (NEO: ``Dqk = 2 * Dv``).
* Layout ``[B, H, S, D]``; ``Sq`` query rows may face ``Sk`` keys (a context shard).
  The public entry point, with the backend choice, is ``ops/flash_mixed.py``; the
  backward kernels are in ``flash_mixed_tpu_bwd``, shared pieces in
  ``flash_mixed_tpu_common``.
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
from neo_jax.ops import flash_mixed_tpu_bwd
from neo_jax.ops import flash_mixed_tpu_common as tc
from neo_jax.ops.flash_common import MASK_VALUE, Config

LANES, SUBLANES = tc.LANES, tc.SUBLANES


def _visible(start_ref, limit_ref, j, bq, bk):
  """``[bq, bk] bool``: the interval mask of q rows vs the keys of kv block ``j``."""
  kpos = j * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
  return (kpos >= start_ref[:, :1]) & (kpos <= limit_ref[:, :1])


def _fwd_kernel(sched_ref, qms_ref, qml_ref,                        # scalar prefetch
                q_ref, k_ref, v_ref, start_ref, limit_ref,            # inputs
                o_ref, lse_ref,                                       # outputs
                m_sc, l_sc, acc_sc,                                   # scratch
                *, scale, bq, bk, nk):
  p, j, first, last = tc.schedule_step(sched_ref, 1, nk)

  @pl.when(first)
  def _init():
    m_sc[...] = jnp.full_like(m_sc, MASK_VALUE)
    l_sc[...] = jnp.zeros_like(l_sc)
    acc_sc[...] = jnp.zeros_like(acc_sc)

  def step(masked):
    s = lax.dot_general(q_ref[...], k_ref[...], tc.NT,
                        preferred_element_type=jnp.float32) * scale
    if masked:
      vis = _visible(start_ref, limit_ref, j, bq, bk)
      s = jnp.where(vis, s, MASK_VALUE)
    m_prev = m_sc[...]                                   # [bq, LANES]
    m_next = jnp.maximum(m_prev, s.max(axis=-1, keepdims=True))
    p_ = jnp.exp(s - m_next[:, :1])
    if masked:
      p_ = jnp.where(vis, p_, 0.0)
    alpha = jnp.exp(m_prev - m_next)
    l_sc[...] = alpha * l_sc[...] + p_.sum(axis=-1, keepdims=True)
    m_sc[...] = m_next
    v = v_ref[...]
    acc_sc[...] = acc_sc[...] * alpha[:, :1] + jnp.dot(
        p_.astype(v.dtype), v, preferred_element_type=jnp.float32)

  tc.dispatch_step(step, tc.is_full(qms_ref[p], qml_ref[p], j, bk))

  @pl.when(last)
  def _finish():
    l = l_sc[...]
    o_ref[...] = (acc_sc[...] / l[:, :1]).astype(o_ref.dtype)
    # Column -> row (a 2-D transpose) so the residual is [.., SUBLANES, S], not
    # [.., S, LANES]: 16x less HBM.
    lse_ref[...] = jnp.transpose(m_sc[...] + jnp.log(l))[:SUBLANES]


def _fwd(cfg: Config, q, k, v, start, limit, r: br.BlockRanges):
  """Forward kernel call. q ``[B,Hq,Sq,Dqk]``, k ``[B,Hkv,Sk,Dqk]``, v ``[B,Hkv,Sk,Dv]``,
  start / limit ``[B, Sq] int32``; returns ``(o, lse [B, Hq, Sq] float32)``, NaN when
  the ranges hold more pairs than the schedule's capacity."""
  b, hq, s, dqk = q.shape
  sk, dv = k.shape[2], v.shape[-1]
  bq, bk, g = cfg.block_q, cfg.block_kv, cfg.group
  nq, nk = s // bq, sk // bk
  cap = tc.capacity(cfg.max_sample_tokens, b, bq, bk, nq, nk)
  sched = br.flat_schedule(r.kv_lo, r.kv_hi, cap, nk)

  def blocks(t, sched):
    """(batch row, q block, kv block) of step ``t``."""
    p, j = tc.unpack(sched, t, nk)
    return (*tc.split(p, nq, b), j)

  def q_map(h, t, sched, *_):
    b_, i, _ = blocks(t, sched)
    return b_, h, i, 0

  def q_map_t(h, t, sched, *_):
    b_, i, _ = blocks(t, sched)
    return b_, h, 0, i

  def kv_map(h, t, sched, *_):
    b_, _, j = blocks(t, sched)
    return b_, tc.div(h, g), j, 0

  def row_map(h, t, sched, *_):
    b_, i, _ = blocks(t, sched)
    return b_, i, 0

  kernel = functools.partial(_fwd_kernel, scale=cfg.scale, bq=bq, bk=bk, nk=nk)
  o, lse = pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=3,
          grid=(hq, sched.count),
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
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
      interpret=cfg.interpret,
      cost_estimate=tc.cost(b, hq, s, sk, bq, bk, matmul_width=dqk + dv,
                            streamed_bytes=bk * (dqk + dv) * k.dtype.itemsize,
                            fixed_bytes=b * hq * s * (dqk + dv) * q.dtype.itemsize,
                            max_blocks=hq * cap),
      name="flash_mixed_fwd",
  )(tc.packed(sched, nk), r.q_max_start, r.q_min_limit,
    q, k, v, tc.lanes(start), tc.lanes(limit))
  return tc.poison_if_over(sched, o, lse[:, :, 0])


_flash = flash_common.differentiable(_fwd, flash_mixed_tpu_bwd.bwd_calls)


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
  scale, block sizes (q blocks multiples of 8 and 128, kv blocks of 8), GQA group and
  the sample-length cap that sizes the schedules (``max_sample_tokens``, 0 = none).
  Rows are padded to a multiple of the q blocks, keys of the kv blocks.
  """
  return flash_common.run_padded(_flash, cfg, q, k, v, bounds,
                                 q_multiple=math.lcm(cfg.block_q, cfg.block_q_bwd),
                                 kv_multiple=math.lcm(cfg.block_kv, cfg.block_kv_bwd))
