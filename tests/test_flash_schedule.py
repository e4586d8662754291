"""The Mosaic kernels' flattened schedule: the list of visited (q block, kv block) pairs.

Checked against the dense mask (``mask.mixed_mask``, independent of the interval
form): the q-major and kv-major lists hold exactly the blocks with a visible pair,
in the order the kernels' accumulators need, for whole rows, rows padded as
``run_padded`` pads them, and a context shard's rows; the static capacity
(``block_ranges.pair_bound``) holds every capped packing and is nearly reached by the
worst one; the kernels' pair axis is a dynamic grid dimension (its size is the real
count, no empty step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neo_jax.ops import block_ranges as br
from neo_jax.ops import flash_mixed
from neo_jax.ops import mask as mask_lib
from testlib.attention import random_packed_ids


def nonempty_blocks(seg, unit, rows, bq, bk, kv_len):
  """Set of (b, q block, kv block) with a visible pair, for ``rows`` (a slice of the
  sequence, padded to ``bq`` with rows that see nothing new) from the dense mask."""
  m = np.asarray(mask_lib.mixed_mask(seg, unit))[:, rows]          # [B, R, S]
  b, r, s = m.shape
  m = np.pad(m, ((0, 0), (0, -(-r // bq) * bq - r), (0, kv_len - s)))
  m = m.reshape(b, -1, bq, kv_len // bk, bk).any((2, 4))
  return {tuple(x) for x in np.argwhere(m)}


def listed(sched: br.Schedule, n_outer: int, q_major: bool):
  """The schedule's first ``count`` entries as (b, q block, kv block) tuples, checked
  to be ordered outer-major, inner ascending, and padded with the last entry."""
  outer, inner = np.asarray(sched.outer), np.asarray(sched.inner)
  n = int(sched.count)
  assert n == int(sched.total) <= outer.size
  key = outer[:n].astype(np.int64) * 10 ** 6 + inner[:n]
  assert np.all(np.diff(key) > 0), "not outer-major with ascending inner blocks"
  assert np.all(outer[n:] == outer[n - 1]) and np.all(inner[n:] == inner[n - 1])
  b, blk = np.divmod(outer[:n], n_outer)
  return {(int(x), int(y), int(z)) if q_major else (int(x), int(z), int(y))
          for x, y, z in zip(b, blk, inner[:n])}


@pytest.mark.parametrize("bq,bk", [(16, 16), (16, 32), (32, 16)])
def test_schedules_list_exactly_the_nonempty_blocks(bq, bk):
  rng = np.random.default_rng(bq * 3 + bk)
  s = 128
  for trial in range(8):
    seg, unit = random_packed_ids(rng, 2, s)
    tb = br.token_bounds(jnp.asarray(seg), jnp.asarray(unit))
    cases = [("whole", np.arange(s), tb, s)]
    # Rows padded past the end as run_padded pads them (to 3 q blocks' multiple).
    q_pad = -(-s // (3 * bq)) * (3 * bq)
    cases.append(("padded", np.arange(s), br.pad_bounds(tb, q_pad), s))
    # A context shard: rows [lo, lo + 40) against all keys, padded to the q block.
    lo = int(rng.integers(0, s - 40))
    shard = br.TokenBounds(tb.start[:, lo:lo + 40], tb.limit[:, lo:lo + 40])
    cases.append(("shard", np.arange(lo, lo + 40), br.pad_bounds(shard, -(-40 // bq) * bq), s))
    for name, rows, bounds, kv_len in cases:
      nq, nk = bounds.start.shape[1] // bq, kv_len // bk
      r = br.block_ranges(bounds, bq, bk, kv_len=kv_len)
      cap = 2 * br.pair_bound(s, bq, bk, nq, nk)
      want = nonempty_blocks(seg, unit, rows, bq, bk, kv_len)
      by_q = br.flat_schedule(r.kv_lo, r.kv_hi, cap, nk)
      by_kv = br.flat_schedule(r.q_lo, r.q_hi, cap, nq)
      if name == "padded":
        # A q block of padded rows only sees one key, the last real row's furthest.
        m = np.asarray(mask_lib.mixed_mask(seg, unit))
        want |= {(b, i, int(np.nonzero(m[b, s - 1])[0].max()) // bk) for b in range(2)
                 for i in range(-(-s // bq), nq)}
      assert listed(by_q, nq, True) == want, (name, trial)
      assert listed(by_kv, nk, False) == want, (name, trial)


def test_capacity_overflow_is_reported_not_hidden():
  """More pairs than the capacity: ``count`` stops at the capacity, ``total`` says how
  many there were (the kernels NaN their results on ``total > capacity``)."""
  lo = jnp.array([0, 0, 1], jnp.int32)
  hi = jnp.array([2, 3, 1], jnp.int32)                  # 3 + 4 + 1 = 8 pairs
  full = br.flat_schedule(lo, hi, 8, 4)
  assert int(full.count) == int(full.total) == 8
  np.testing.assert_array_equal(full.outer, [0, 0, 0, 1, 1, 1, 1, 2])
  np.testing.assert_array_equal(full.inner, [0, 1, 2, 0, 1, 2, 3, 1])
  short = br.flat_schedule(lo, hi, 6, 4)
  assert (int(short.count), int(short.total)) == (6, 8)
  padded = br.flat_schedule(lo, hi, 11, 4)
  np.testing.assert_array_equal(padded.outer[8:], [2, 2, 2])
  np.testing.assert_array_equal(padded.inner[8:], [1, 1, 1])


def capped_images(seq: int, cap: int, offset: int):
  """Back-to-back ``cap``-token samples, each one image, after an ``offset``-token one."""
  seg = np.zeros((1, seq), np.int32)
  pos, sid = 0, 1
  for n in [offset] + [cap] * (seq // cap + 1):
    n = min(n, seq - pos)
    seg[0, pos:pos + n] = sid
    pos, sid = pos + n, sid + 1
  return seg, seg.copy()


@pytest.mark.parametrize("seq,cap,bq,bk", [(240, 40, 16, 16), (240, 16, 16, 16),
                                           (256, 48, 32, 16), (256, 40, 16, 32)])
def test_pair_bound_is_nearly_reached_by_the_worst_packing(seq, cap, bq, bk):
  """Samples of exactly ``cap`` tokens that are one image each (every row sees its whole
  sample), shifted off the block grid: the most pairs over the shifts is within 15% of
  ``pair_bound`` (kv blocks no larger than q blocks, the kernels' shapes; 30% with kv
  blocks twice the q blocks, where equal samples cannot all straddle the most kv
  blocks) and never above it (counted on the dense mask)."""
  nq, nk = seq // bq, seq // bk
  bound = br.pair_bound(cap, bq, bk, nq, nk)
  worst = max(len(nonempty_blocks(*capped_images(seq, cap, off), np.arange(seq), bq, bk, seq))
              for off in range(1, cap))
  assert (0.85 if bk <= bq else 0.7) * bound <= worst <= bound, (worst, bound)
  # Far below the per-q-block bound's total (the grid before the flattened schedule).
  assert bound < nq * br.kv_step_bound(cap, bq, bk, nk)


def test_pair_axis_is_a_dynamic_grid_dimension():
  """The forward, dQ and dK / dV calls run ``Schedule.count`` steps: their pair axis is a
  dynamic grid dimension (one per call), so no step of the grid is empty."""
  x = jnp.zeros((1, 64, 2, 16), jnp.float32)
  ids = jnp.ones((1, 64), jnp.int32)
  fn = lambda q: jnp.sum(flash_mixed.flash_mixed_attention(
      q, x, x, ids, ids, scale=0.25, block_q=16, block_kv=16, interpret=True))
  jaxpr = jax.make_jaxpr(jax.grad(fn))(x)
  calls = {}

  def walk(jpr):
    for eqn in jpr.eqns:
      if eqn.primitive.name == "pallas_call":
        calls[eqn.params["name"]] = eqn.params["grid_mapping"].num_dynamic_grid_bounds
      for v in eqn.params.values():
        for sub in (v if isinstance(v, (list, tuple)) else [v]):
          if hasattr(sub, "eqns"):
            walk(sub)
          elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
            walk(sub.jaxpr)

  walk(jaxpr.jaxpr)
  assert calls == {"flash_mixed_fwd": 1, "flash_mixed_dq": 1, "flash_mixed_dkv": 1}, calls


def test_a_schedule_too_long_for_scalar_memory_is_refused_naming_the_cap():
  """256K tokens in blocks of 512 without a sample cap: up to 512 x 512 pairs, 1 MiB of
  schedule, more than TPU scalar memory holds: a clear error at trace time naming
  ``model.max_sample_tokens``; with a cap of 8192 the schedule holds 512 * 17 + 511
  pairs and the call traces."""
  x = jax.ShapeDtypeStruct((1, 262144, 1, 128), jnp.bfloat16)
  ids = jax.ShapeDtypeStruct((1, 262144), jnp.int32)
  fn = lambda cap: lambda q, k, v, s, u: flash_mixed.flash_mixed_attention(
      q, k, v, s, u, scale=0.1, interpret=True, max_sample_tokens=cap)
  with pytest.raises(ValueError, match="model.max_sample_tokens"):
    jax.eval_shape(fn(0), x, x, x, ids, ids)
  assert br.pair_bound(8192, 512, 512, 512, 512) == 512 * 17 + 511
  jax.eval_shape(fn(8192), x, x, x, ids, ids)
