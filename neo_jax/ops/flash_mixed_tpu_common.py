"""What the Mosaic forward and backward kernels of the mixed mask share.

Layout constants of the TPU vector unit, the lane / sublane broadcasts of per-row
vectors, the schedules (``block_ranges.flat_schedule``) and the step bookkeeping over
them, the static cost hint for XLA's scheduler and the guard that turns a schedule
longer than its static capacity into NaNs. Used by ``flash_mixed_tpu`` (forward, entry
point) and ``flash_mixed_tpu_bwd`` (dQ, dK / dV).
"""

from __future__ import annotations

import jax
from jax import lax
from jax.experimental import pallas as pl
import jax.numpy as jnp

from neo_jax.ops import block_ranges as br

LANES = 128      # TPU lane width: per-row statistics in the forward are lane-broadcast.
SUBLANES = 8     # TPU sublanes: per-row vectors stored as rows are sublane-broadcast.
NT = (((1,), (1,)), ((), ()))   # a @ b.T
TN = (((0,), (0,)), ((), ()))   # a.T @ b


def div(x, n: int):
  """``x // n`` for non-negative ints (``lax.div``: Mosaic lowers ``//`` via sign)."""
  return x if n == 1 else lax.div(x, n)


def split(p, n: int, batch: int):
  """Flat block ``p = b * n + block`` -> ``(b, block)`` (scalars; ``b = 0`` when ``batch == 1``)."""
  if batch == 1:
    return 0, p
  b = lax.div(p, n)
  return b, p - b * n


def lanes(x):
  """``[B, S] -> [B, S, LANES]`` lane-broadcast (the forward reads column vectors)."""
  return jnp.broadcast_to(x[..., None], (*x.shape, LANES))


def sublanes(x):
  """``[B, S] -> [B, SUBLANES, S]`` sublane-broadcast (the backward reads rows)."""
  return jnp.broadcast_to(x[:, None], (x.shape[0], SUBLANES, x.shape[1]))


def is_full(q_max_start, q_min_limit, j, bk):
  """Scalar bool: every row of the q block sees every key of kv block ``j``."""
  return (q_max_start <= j * bk) & (q_min_limit >= j * bk + bk - 1)


def dispatch_step(step, full) -> None:
  """Runs ``step(masked=False)`` on a fully visible block pair, ``step(masked=True)`` on a
  partly visible one (every grid step is a visited pair: the grid is the schedule)."""
  pl.when(full)(lambda: step(False))
  pl.when(jnp.logical_not(full))(lambda: step(True))


# Scalar memory the schedules may take (TPU SMEM is 1 MiB per core; the rest is left to
# the per-block vectors and Mosaic): 3/4 MiB, 196,608 pairs at 4 bytes each.
SMEM_SCHEDULE_BYTES = 3 << 18


def capacity(max_sample_tokens: int, b: int, bq: int, bk: int, nq: int, nk: int) -> int:
  """Static length of a batch's schedule: ``b`` rows of ``block_ranges.pair_bound``.

  Raises:
    ValueError: the list would not fit in the scalar memory budget (a long sequence
      without a sample cap: ``nq * nk`` pairs per row), naming the config fields.
  """
  cap = b * br.pair_bound(max_sample_tokens, bq, bk, nq, nk)
  if b * nq * nk >= 2 ** 31:
    raise ValueError(f"TPU kernel: {b} x {nq} x {nk} blocks do not fit the int32 schedule.")
  if 4 * cap > SMEM_SCHEDULE_BYTES:
    raise ValueError(
        f"TPU kernel: the block schedule of {b} row(s) x {nq} q blocks x {nk} kv blocks "
        f"holds up to {cap} pairs ({4 * cap >> 10} KiB of scalar memory, budget "
        f"{SMEM_SCHEDULE_BYTES >> 10} KiB) with max_sample_tokens={max_sample_tokens}: set "
        f"model.max_sample_tokens (the packer's sample cap), larger blocks "
        f"(model.attention_block_q / attention_block_kv) or fewer rows per device.")
  return cap


def packed(sched: br.Schedule, n_inner: int) -> jax.Array:
  """The schedule as one ``[capacity] int32`` SMEM array, ``outer * n_inner + inner``."""
  return sched.outer * n_inner + sched.inner


def unpack(sched_ref, t, n_inner: int):
  """Entry ``t`` of a ``packed`` schedule -> ``(outer, inner)`` (scalars)."""
  e = sched_ref[t]
  p = div(e, n_inner)
  return p, e - p * n_inner


def schedule_step(sched_ref, axis: int, n_inner: int):
  """At grid step ``t`` of a schedule axis: ``(outer block, inner block, first, last)``.

  ``first`` / ``last``: step ``t`` is the first / last entry of its outer block (the
  init / finalize points of the block's accumulators: the output block index changes
  along the axis). The grid has ``Schedule.count`` steps; entries past it repeat the
  last one, hence the explicit ``t == count - 1``.
  """
  t, n = pl.program_id(axis), pl.num_programs(axis)
  p, x = unpack(sched_ref, t, n_inner)
  prev = unpack(sched_ref, jnp.maximum(t - 1, 0), n_inner)[0]
  nxt = unpack(sched_ref, jnp.minimum(t + 1, sched_ref.shape[0] - 1), n_inner)[0]
  return p, x, (t == 0) | (prev != p), (t == n - 1) | (nxt != p)


def cost(b, h, sq, sk, bq, bk, *, matmul_width, streamed_bytes, fixed_bytes,
         max_blocks=None):
  """Static ``pl.CostEstimate`` for XLA's scheduler.

  The visited blocks depend on the data; the hint assumes a causal pattern (the blocks
  on and below the diagonal), the worst case of one sample per sequence without
  images (for a context shard, ``sq < sk``, the average shard), capped by
  ``max_blocks`` (the schedule's static capacity, when smaller). ``matmul_width``: sum of
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


def poison_if_over(sched: br.Schedule, *arrays: jax.Array):
  """NaN-fills ``arrays`` when the schedule's pairs do not fit its static capacity.

  The capacity (``block_ranges.pair_bound`` per row) holds every pair of a batch whose
  samples respect ``max_sample_tokens``; a batch holding a longer sample may need
  more, and the kernel, which runs only the listed pairs, would drop blocks. The
  packer and the trainer refuse such batches; this makes the result unusable (the
  trainer's non-finite check stops the run) instead of wrong if one slips through.

  Returns:
    ``arrays`` unchanged (``total <= capacity``) or NaN.
  """
  ok = sched.total <= sched.outer.shape[0]
  return tuple(jnp.where(ok, a, jnp.asarray(jnp.nan, a.dtype)) for a in arrays)
