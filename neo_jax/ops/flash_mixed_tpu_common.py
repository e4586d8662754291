"""What the Mosaic forward and backward kernels of the mixed mask share.

Layout constants of the TPU vector unit, the lane / sublane broadcasts of per-row
vectors, the grid-step bookkeeping over the ranges of ``ops/block_ranges.py``, the
static cost hint for XLA's scheduler and the guard that turns ranges wider than the
grid into NaNs. Used by ``flash_mixed_tpu`` (forward, entry point) and
``flash_mixed_tpu_bwd`` (dQ, dK / dV).
"""

from __future__ import annotations

import jax
from jax import lax
from jax.experimental import pallas as pl
import jax.numpy as jnp

LANES = 128      # TPU lane width: per-row statistics in the forward are lane-broadcast.
SUBLANES = 8     # TPU sublanes: per-row vectors stored as rows are sublane-broadcast.
NT = (((1,), (1,)), ((), ()))   # a @ b.T
TN = (((0,), (0,)), ((), ()))   # a.T @ b


def div(x, n: int):
  """``x // n`` for non-negative ints (``lax.div``: Mosaic lowers ``//`` via sign)."""
  return x if n == 1 else lax.div(x, n)


def lanes(x):
  """``[B, S] -> [B, S, LANES]`` lane-broadcast (the forward reads column vectors)."""
  return jnp.broadcast_to(x[..., None], (*x.shape, LANES))


def sublanes(x):
  """``[B, S] -> [B, SUBLANES, S]`` sublane-broadcast (the backward reads rows)."""
  return jnp.broadcast_to(x[:, None], (x.shape[0], SUBLANES, x.shape[1]))


def is_full(q_max_start, q_min_limit, j, bk):
  """Scalar bool: every row of the q block sees every key of kv block ``j``."""
  return (q_max_start <= j * bk) & (q_min_limit >= j * bk + bk - 1)


def dispatch_step(step, run, full) -> None:
  """Runs ``step(masked=False)`` on a fully visible block pair, ``step(masked=True)`` on a
  partly visible one, nothing on a grid step past the range (``run`` False)."""
  pl.when(run & full)(lambda: step(False))
  pl.when(run & jnp.logical_not(full))(lambda: step(True))


def kv_step(kv_lo_ref, kv_hi_ref, nq):
  """Grid (b, h, q block, step) -> (step, flat q block, kv block visited, range end)."""
  b, i, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  blk = b * nq + i
  return t, blk, kv_lo_ref[blk] + t, kv_hi_ref[blk]


def cost(b, h, sq, sk, bq, bk, *, matmul_width, streamed_bytes, fixed_bytes,
         max_blocks=None):
  """Static ``pl.CostEstimate`` for XLA's scheduler.

  The visited blocks depend on the data; the hint assumes a causal pattern (the blocks
  on and below the diagonal), the worst case of one sample per sequence without
  images (for a context shard, ``sq < sk``, the average shard), capped by
  ``max_blocks`` (the bounded grid's size, when smaller). ``matmul_width``: sum of
  the contracted/produced widths of the block's matmuls; ``streamed_bytes``: bytes
  DMA'd per visited block; ``fixed_bytes``: once.
  """
  nq, nk = sq // bq, sk // bk
  n = max(nq, nk)
  blocks = b * h * nq * nk * (n + 1) // (2 * n)
  if max_blocks is not None:
    blocks = min(blocks, max_blocks)
  return pl.CostEstimate(flops=int(2 * bq * bk * matmul_width * blocks),
                         transcendentals=int(bq * bk * blocks),
                         bytes_accessed=int(blocks * streamed_bytes + fixed_bytes))


def poison_if_wider(lo: jax.Array, hi: jax.Array, steps: int, *arrays: jax.Array):
  """NaN-fills ``arrays`` when a range ``[lo, hi]`` holds more than ``steps`` blocks.

  The bounded grid (``block_ranges.kv_step_bound`` / ``q_step_bound``) visits at most
  ``steps`` blocks per range; a batch holding a sample longer than the configured
  ``max_sample_tokens`` would lose blocks silently. The packer and the trainer refuse
  such batches; this makes the kernel's result unusable (the trainer's non-finite
  check stops the run) instead of wrong if one slips through.

  Returns:
    ``arrays`` unchanged (``steps`` >= the widest range) or NaN.
  """
  ok = jnp.max(hi - lo + 1) <= steps
  return tuple(jnp.where(ok, a, jnp.asarray(jnp.nan, a.dtype)) for a in arrays)
