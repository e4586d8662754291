"""The TPU kernel's bounded grid: the step bounds, the sample cap that makes them hold,
padding's diagonal, and the guard against a batch that breaks the cap.

The bounds of ``block_ranges.kv_step_bound`` / ``q_step_bound`` are checked against
the widest ranges ``block_ranges.block_ranges`` produces on random packings whose
samples respect the cap (with trailing padding, padded rows and context shards) and
against a hand-built worst case; the kernel with a bounded grid against the dense
reference; the packer, the trainer's check and the kernel's NaN guard on samples
longer than the cap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neo_jax.data import packing
from neo_jax.ops import block_ranges as br
from neo_jax.ops import flash_mixed, mask as mask_lib, reference
from neo_jax.train import health


def capped_packing(rng, batch: int, seq: int, cap: int):
  """``(segment_ids, unit_ids)`` ``[batch, seq] int32``: samples of 1..cap tokens, each
  with 0-2 visual units anywhere inside (possibly at its first or last token), then
  trailing padding (0 to a quarter of the row)."""
  seg = np.zeros((batch, seq), np.int32)
  unit = np.zeros((batch, seq), np.int32)
  u = 1
  for b in range(batch):
    real = seq - int(rng.integers(0, seq // 4 + 1))
    pos, s_id = 0, 1
    while pos < real:
      n = min(int(rng.integers(1, cap + 1)), real - pos)
      if rng.random() < 0.3:
        n = min(cap, real - pos)          # often a full-length sample
      seg[b, pos:pos + n] = s_id
      for _ in range(int(rng.integers(0, 3))):
        a = pos + int(rng.integers(0, n))
        e = min(pos + n, a + int(rng.integers(1, n + 1)))
        if not unit[b, a:e].any():
          unit[b, a:e] = u
          u += 1
      pos, s_id = pos + n, s_id + 1
  return seg, unit


def widest(r: br.BlockRanges) -> tuple[int, int]:
  """(most kv blocks of one q block, most q blocks of one kv block)."""
  kv = int(np.max(np.asarray(r.kv_hi) - np.asarray(r.kv_lo) + 1))
  q = int(np.max(np.asarray(r.q_hi) - np.asarray(r.q_lo) + 1))
  return kv, q


def most_pairs(r: br.BlockRanges, batch: int) -> int:
  """The most (q block, kv block) pairs one batch row visits."""
  return int(np.max((np.asarray(r.kv_hi) - np.asarray(r.kv_lo) + 1).reshape(batch, -1).sum(1)))


@pytest.mark.parametrize("bq,bk", [(16, 16), (16, 32), (32, 16), (24, 8)])
@pytest.mark.parametrize("cap", [1, 5, 16, 40])
def test_step_bounds_hold_for_every_capped_packing(bq, bk, cap):
  """Whole sequences, rows padded past the end (as ``run_padded``) and context shards
  whose first row is not on a block multiple: the widest range never exceeds the
  per-block bounds, a row's pairs never ``pair_bound`` (the schedules' capacity)."""
  rng = np.random.default_rng(cap * 100 + bq + bk)
  seq = 240
  for _ in range(25):
    seg, unit = capped_packing(rng, 2, seq, cap)
    tb = br.token_bounds(jnp.asarray(seg), jnp.asarray(unit))
    # Rows padded to a multiple of 3 q blocks (the lcm of forward / backward blocks).
    q_pad = -(-seq // (3 * bq)) * (3 * bq)
    padded = br.pad_bounds(tb, q_pad)
    eff = max(cap, q_pad - seq + 1)
    k_len = -(-seq // bk) * bk
    for rows, bounds in (("whole", tb), ("padded", padded)):
      n = bounds.start.shape[1]
      if n % bq:
        continue
      c = eff if rows == "padded" else cap
      r = br.block_ranges(bounds, bq, bk, kv_len=k_len if k_len >= seq else None)
      kv, q = widest(r)
      assert kv <= br.kv_step_bound(c, bq, bk, k_len // bk), (rows, kv)
      assert q <= br.q_step_bound(c, bq, bk, n // bq), (rows, q)
      assert most_pairs(r, 2) <= br.pair_bound(c, bq, bk, n // bq, k_len // bk), rows
    # A context shard: 4 * bq rows starting at an offset that is not a block multiple.
    off = int(rng.integers(1, seq - 4 * bq))
    shard = br.TokenBounds(tb.start[:, off:off + 4 * bq], tb.limit[:, off:off + 4 * bq])
    r = br.block_ranges(shard, bq, bk, kv_len=k_len)
    kv, q = widest(r)
    assert kv <= br.kv_step_bound(cap, bq, bk, k_len // bk)
    assert q <= br.q_step_bound(cap, bq, bk, 4)
    assert most_pairs(r, 2) <= br.pair_bound(cap, bq, bk, 4, k_len // bk)


@pytest.mark.parametrize("bq,bk,cap", [(16, 16, 40), (32, 16, 24), (16, 32, 50)])
def test_kv_bound_is_reached_by_the_worst_packing(bq, bk, cap):
  """A q block whose first row ends a ``cap``-token sample and whose last row starts a
  sample opening with a ``cap``-token image sees ``2 cap + bq - 2`` keys: the bound is
  at most one block above what the ranges give (one only from alignment)."""
  x = 4 * bq                                    # the q block [x, x + bq)
  seq = x + bq + 2 * cap + 2 * bk
  seg = np.zeros((1, seq), np.int32)
  unit = np.zeros((1, seq), np.int32)
  seg[0, x - cap + 1:x + 1] = 1                 # ends at the block's first row
  seg[0, :x - cap + 1] = 9
  for i, p in enumerate(range(x + 1, x + bq - 1)):
    seg[0, p] = 10 + i                          # one-token samples in between
  seg[0, x + bq - 1:x + bq - 1 + cap] = 2       # starts at the block's last row ...
  unit[0, x + bq - 1:x + bq - 1 + cap] = 1      # ... with a cap-token image
  seg, unit = seg[:, :seq // bq * bq], unit[:, :seq // bq * bq]
  tb = br.token_bounds(jnp.asarray(seg), jnp.asarray(unit))
  assert int(tb.start[0, x]) == x - cap + 1 and int(tb.limit[0, x + bq - 1]) == x + bq + cap - 2
  r = br.block_ranges(tb, bq, bk, kv_len=-(-seg.shape[1] // bk) * bk)
  i = x // bq
  got = int(r.kv_hi[i] - r.kv_lo[i] + 1)
  want = (x + bq + cap - 2) // bk - (x - cap + 1) // bk + 1     # blocks of the span
  assert got == want
  bound = br.kv_step_bound(cap, bq, bk, 10 ** 6)
  assert want <= bound <= want + 1


def test_bounds_without_a_cap_are_the_block_counts():
  assert br.kv_step_bound(0, 512, 512, 72) == 72
  assert br.q_step_bound(0, 512, 512, 72) == 72
  # NEO-ov at 36K, blocks of 512: a 4096-token cap bounds both axes to 18 of 72.
  assert br.kv_step_bound(4096, 512, 512, 72) == 18
  assert br.q_step_bound(4096, 512, 512, 72) == 18


def test_padding_sees_only_itself_and_costs_one_block_per_q_block():
  """Padding rows attend only their own position (the dense mask and the intervals
  agree), so a long padding run costs one kv block per q block, not a triangle."""
  seg = np.zeros((1, 256), np.int32)
  seg[0, :40] = 1
  unit = np.zeros_like(seg)
  m = np.asarray(mask_lib.mixed_mask(seg, unit))[0]
  pad = np.arange(40, 256)
  np.testing.assert_array_equal(m[np.ix_(pad, np.arange(256))], np.eye(256, dtype=bool)[pad])
  c = br.block_counts(jnp.asarray(seg), jnp.asarray(unit), 32, 32)
  # q block 0 and 1: sample 1 (blocks 0..1 causal, 3 pairs); blocks 2..7: diagonal only.
  assert c["visited"] == 3 + 6


def _kernel_vs_reference(cap, seg, unit, bq=16, bk=16, seed=0):
  rng = np.random.default_rng(seed)
  b, s = seg.shape
  q = jnp.asarray(rng.normal(size=(b, s, 4, 16)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(b, s, 2, 16)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(b, s, 2, 8)), jnp.float32)
  ct = jnp.asarray(rng.normal(size=(b, s, 4, 8)), jnp.float32)
  seg, unit = jnp.asarray(seg), jnp.asarray(unit)

  def run(fn):
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, seg, unit), q, k, v)
    return (out, *vjp(ct))

  kern = jax.jit(lambda: run(lambda *a: flash_mixed.flash_mixed_attention(
      *a, scale=0.25, block_q=bq, block_kv=bk, interpret=True, max_sample_tokens=cap)))()
  ref = run(lambda *a: reference.reference_attention(*a, scale=0.25))
  return kern, ref


@pytest.mark.parametrize("seed", range(3))
def test_kernel_with_a_bounded_grid_equals_the_reference(seed):
  """Samples of at most 20 tokens in 160-token rows, blocks of 16: the schedules hold
  10 * (1 + ceil(19 / 16)) + 9 = 39 of a row's 100 block pairs (the grids before them
  walked 5 of 10 steps per block); forward and gradients <= 2e-5."""
  cap = 20
  assert br.pair_bound(cap, 16, 16, 10, 10) == 39
  assert br.kv_step_bound(cap, 16, 16, 10) == 5 and br.q_step_bound(cap, 16, 16, 10) == 5
  seg, unit = capped_packing(np.random.default_rng(seed), 2, 150, cap)   # rows padded inside
  got, want = _kernel_vs_reference(cap, seg, unit, seed=seed)
  for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
    real = (np.asarray(seg) > 0)[..., None, None]
    err = np.max(np.abs(np.where(real, np.asarray(a) - np.asarray(b), 0.0)))
    assert err <= 2e-5, (name, err)
    assert np.all(np.isfinite(np.asarray(a))), name


def test_a_sample_longer_than_the_cap_gives_nan_not_a_wrong_result():
  """Cap 20, blocks of 16, 160-token rows: capacity 39 pairs per row. One 160-token
  causal sample holds 55 pairs: NaN everywhere, forward and gradients."""
  seg = np.ones((1, 160), np.int32)
  got, _ = _kernel_vs_reference(20, seg, np.zeros_like(seg))
  assert all(np.isnan(np.asarray(a)).all() for a in got)


def test_nan_exactly_when_the_batch_overflows_the_schedule():
  """The guard is on the batch's pair count against its capacity (2 rows x 39): a long
  sample (55 pairs) next to a padding row (10 pairs) fits, and the result is exact,
  nothing missing; two long samples (110 pairs) do not, and everything is NaN."""
  long_row, pad_row = np.ones(160, np.int32), np.zeros(160, np.int32)
  got, want = _kernel_vs_reference(20, np.stack([long_row, pad_row]), np.zeros((2, 160), np.int32))
  for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
    np.testing.assert_allclose(np.asarray(a)[0], np.asarray(b)[0], atol=2e-5, err_msg=name)
  got, _ = _kernel_vs_reference(20, np.stack([long_row, long_row]), np.zeros((2, 160), np.int32))
  assert all(np.isnan(np.asarray(a)).all() for a in got)


def test_packer_drops_samples_longer_than_the_cap():
  def sample(n):
    return {"input_ids": np.full(n, 5, np.int32), "labels": np.full(n, 5, np.int32),
            "token_hw": np.zeros((n, 2), np.int32),
            "pixel_values": np.zeros((0, 4, 768), np.uint8), "num_supervised": n - 1}
  import grain  # pylint: disable=import-outside-toplevel
  lengths = [10, 30, 12, 25, 8]
  src = grain.MapDataset.source([sample(n) for n in lengths]).to_iter_dataset()
  it = iter(packing.PackIterDataset(src, packing.PackOptions(
      seq_len=64, batch_size=1, max_sample_tokens=20, pad_id=0)))
  batches = list(it)
  assert it.stats()["skip/too_long"] == 2
  runs = sorted(health.longest_sample(b["segment_ids"][None, r]) for b in batches
                for r in range(1))
  assert max(runs) <= 20
  assert sum(int((b["segment_ids"] > 0).sum()) for b in batches) == 10 + 12 + 8


def test_longest_sample_and_the_trainers_check():
  seg = np.array([[1, 1, 1, 2, 2, 0, 0, 0], [1, 2, 2, 2, 2, 3, 0, 0]])
  assert health.longest_sample(seg) == 4          # padding runs do not count
  assert health.longest_sample(np.zeros((2, 8), int)) == 0
  health.check_sample_lengths(seg, 4, step=0)
  health.check_sample_lengths(seg, 0, step=0)     # no cap
  with pytest.raises(ValueError, match="max_sample_tokens=3"):
    health.check_sample_lengths(seg, 3, step=6)
