"""Block ranges of the mixed mask: which (q block, kv block) pairs can hold a visible pair.

The mixed mask of docs/design.md §1.4 in the "limit" form of ``ops/mask.py``: query ``i``
sees key ``j`` iff ``seg_i == seg_j and j <= limit_i``. Packed samples are contiguous
runs of one segment id (padding, id 0, is the last run), so "same segment" is
``j >= start_i`` with ``start_i`` the first token of ``i``'s run, and the mask is the
interval

    start_i <= j <= limit_i.

Padding (segment 0) sees only itself (``start_i = limit_i = i``): its outputs are never
used, and a padding run then costs one block per q block instead of a causal triangle.
Both ``start`` and ``limit`` are non-decreasing along the sequence (contiguous samples,
contiguous visual units inside a sample). Hence for a q block the visible keys lie in
``[start(first row), max limit]``, every kv block in that range holds at least one
visible pair (the union of the rows' intervals is contiguous), and the q blocks that
see one kv block form an interval too (the mirror image, used by dK / dV).

Everything here is plain ``jnp`` run before the kernel; the kernel receives the ranges
(the Triton kernels) or their flattened list (``flat_schedule``, the Mosaic kernels) by
scalar prefetch. The static side, with every packed sample at most ``L`` tokens long (the
packer's cap): ``kv_step_bound`` / ``q_step_bound``, how many blocks one q block (one kv
block) can visit, and ``pair_bound``, how many (q block, kv block) pairs a whole row of
blocks can visit, which sizes the Mosaic kernels' schedules.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from neo_jax.ops import mask as mask_lib


class TokenBounds(NamedTuple):
  """Per-token visible interval ``[start, limit]`` (``[B, S] int32`` each)."""
  start: jax.Array
  limit: jax.Array


class BlockRanges(NamedTuple):
  """Block-level metadata, flattened to 1-D (``b * n + block``) for SMEM.

  Attributes:
    kv_lo: ``[B * nq] int32`` first kv block a q block visits.
    kv_hi: ``[B * nq] int32`` last kv block a q block visits (inclusive).
    q_max_start: ``[B * nq] int32`` largest ``start`` of the q block's rows.
    q_min_limit: ``[B * nq] int32`` smallest ``limit`` of the q block's rows; with
      ``q_max_start`` it decides whether a (q, kv) block pair is fully visible.
    q_lo: ``[B * nk] int32`` first q block that visits a kv block.
    q_hi: ``[B * nk] int32`` last q block that visits a kv block (``q_lo - 1``
      when none does: a kv block made only of internal padding).
  """
  kv_lo: jax.Array
  kv_hi: jax.Array
  q_max_start: jax.Array
  q_min_limit: jax.Array
  q_lo: jax.Array
  q_hi: jax.Array


def token_bounds(segment_ids: jax.Array, unit_ids: jax.Array) -> TokenBounds:
  """The visible key interval of every query.

  Args:
    segment_ids: ``[B, S] int32`` packed-sample ids (0 = padding); each id one
      contiguous run (the packer's layout; a repeated id in two runs is treated as
      two samples, unlike the dense reference).
    unit_ids: ``[B, S] int32`` visual-unit ids (0 = non-visual), contiguous runs.

  Returns:
    ``TokenBounds`` with ``start`` = first index of the query's segment run and
    ``limit`` = ``mask.visible_limit`` (last token of the query's visual unit, or the
    query itself); a padding query (segment 0) has ``start = limit = i`` (its diagonal,
    as ``mask.mixed_mask``).
  """
  b, s = segment_ids.shape
  idx = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
  is_first = jnp.concatenate(
      [jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  is_first = is_first | (segment_ids == 0)
  start = jax.lax.cummax(jnp.where(is_first, idx, 0), axis=1)
  limit = mask_lib.visible_limit(unit_ids)
  return TokenBounds(start.astype(jnp.int32), limit.astype(jnp.int32))


def pad_bounds(bounds: TokenBounds, seq_pad: int) -> TokenBounds:
  """Pads the bounds to ``seq_pad`` rows; each padded row sees one key, the last row's limit.

  That key is real (never a padded one), so the padded rows' softmax is well defined
  and their outputs (discarded) finite; the ranges stay non-decreasing
  (``start_last <= limit_last``); a padded row ``P`` rows past the end sees a key at
  most ``P`` rows before it, like a sample of ``P + 1`` tokens (``q_step_bound``); its
  interval is one key wide (``pair_bound``'s invariant (c)).
  """
  b, s = bounds.start.shape
  extra = seq_pad - s
  if extra == 0:
    return bounds
  fill = jnp.broadcast_to(bounds.limit[:, -1:], (b, extra))
  return TokenBounds(jnp.concatenate([bounds.start, fill], axis=1),
                     jnp.concatenate([bounds.limit, fill], axis=1))


def kv_step_bound(max_sample_tokens: int, block_q: int, block_kv: int, nk: int) -> int:
  """The most kv blocks one q block can visit when no sample exceeds ``L`` tokens.

  Rows ``[x, x + block_q)`` (any ``x``: a context shard's rows need not start on a
  block multiple) see keys in ``[start_x, max limit]``; a real row's sample began at
  most ``L - 1`` tokens before it and ends at most ``L - 1`` after it, a padding row
  sees itself, so the keys lie in ``[x - L + 1, x + block_q + L - 2]``: ``W = 2L +
  block_q - 2`` tokens, which touch at most ``(W + block_kv - 2) // block_kv + 1``
  kv blocks. Attained: a sample of ``L`` tokens ending at the block's first row and one
  starting with an ``L``-token image at its last row.

  Args:
    max_sample_tokens: ``L`` [tokens], 0 = no cap (the result is ``nk``).
    block_q, block_kv: block sizes [tokens]; nk: kv blocks in the sequence.

  Returns:
    ``<= nk`` (the forward / dQ grids' step axis before the flattened schedule; a term
    of ``pair_bound``).
  """
  if max_sample_tokens <= 0:
    return nk
  w = 2 * max_sample_tokens + block_q - 2
  return max(1, min(nk, (w + block_kv - 2) // block_kv + 1))


def q_step_bound(max_sample_tokens: int, block_q: int, block_kv: int, nq: int) -> int:
  """The most q blocks that visit one kv block when no sample exceeds ``L`` tokens.

  A q block starting at row ``x`` visits kv block ``[c, c + block_kv)`` only if
  ``start_x <= c + block_kv - 1`` and its largest limit ``>= c``, so ``x`` lies in
  ``[c - block_q - L + 2, c + block_kv + L - 2]`` (``block_q + block_kv + 2L - 3``
  positions), which holds at most ``ceil(that / block_q)`` q block starts.

  Args: as ``kv_step_bound``, with ``nq`` the q blocks of the rows.

  Returns:
    ``<= nq`` (the dK / dV grid's step axis before the flattened schedule).
  """
  if max_sample_tokens <= 0:
    return nq
  n = block_q + block_kv + 2 * max_sample_tokens - 3
  return max(1, min(nq, -(-n // block_q)))


def pair_bound(max_sample_tokens: int, block_q: int, block_kv: int, nq: int, nk: int) -> int:
  """The most (q block, kv block) pairs one batch row visits when no sample exceeds ``L``.

  Sizes the flattened schedules of the Mosaic kernels (``flat_schedule``, ``B`` times
  this): a batch whose ranges hold more pairs broke the cap, and the kernels NaN the
  result. The kv-major list holds the same pairs as the q-major one (by (a), the
  mirror ranges ``q_lo / q_hi`` are the same set), so one bound sizes both.

  Invariants used (all hold for the kernels' inputs, whole rows, rows padded by
  ``pad_bounds`` and context shards alike):
    (a) ``start`` and ``limit`` are non-decreasing along the rows;
    (b) ``start_r <= limit_r`` and both lie in ``[0, nk * block_kv)``;
    (c) ``limit_r - start_r <= L - 1``: a real row's interval lies inside its sample
        (at most ``L`` tokens); a padding row and a row added by ``pad_bounds`` see
        one key (width 0).

  Proof. Write ``x_i`` / ``e_i`` for the first / last row of q block ``i``; it visits
  ``lo_i = start(x_i) // bk`` .. ``hi_i = limit(e_i) // bk``. With
  ``s_i = start(e_i) // bk``, ``hi_i - lo_i = (hi_i - s_i) + (s_i - lo_i)``:
    * ``hi_i - s_i <= ceil((limit(e_i) - start(e_i)) / bk) <= ceil((L - 1) / bk)``
      by (c) (``a // k - c // k <= ceil((a - c) / k)`` for ``a >= c``);
    * ``s_i <= lo_{i+1}`` by (a) (``e_i < x_{i+1}``), so the second terms telescope:
      ``sum_i (s_i - lo_i) <= s_{nq-1} - lo_0 <= nk - 1`` by (b).
  Summing ``hi_i - lo_i + 1`` over the ``nq`` q blocks:
  ``pairs <= nq * (1 + ceil((L - 1) / bk)) + nk - 1``. The per-block bound gives
  ``nq * kv_step_bound`` (tighter for a shard of few rows against many keys) and
  there are ``nq * nk`` pairs in all; the result is the least of the three.

  Against the per-block bound (``2L + bq`` tokens ahead of and behind every q
  block) this is about ``L`` tokens per q block: a q block straddling two samples
  sees both, but the jumps of ``start`` over the whole row add up to one sequence.
  Nearly attained: back-to-back ``L``-token samples that are one image each,
  starting off a kv block boundary (``tests/test_flash_schedule.py``).

  Args:
    max_sample_tokens: ``L`` [tokens], 0 = no cap (the result is ``nq * nk``); for
      rows padded past the end use ``max(L, P + 1)`` as for ``kv_step_bound``.
    block_q, block_kv: block sizes [tokens]; nq, nk: q / kv blocks of the row.

  Returns:
    A static int in ``[1, nq * nk]``.
  """
  if max_sample_tokens <= 0:
    return nq * nk
  total = nq * (1 + -(-(max_sample_tokens - 1) // block_kv)) + nk - 1
  per_block = nq * kv_step_bound(max_sample_tokens, block_q, block_kv, nk)
  return max(1, min(nq * nk, total, per_block))


class Schedule(NamedTuple):
  """The visited block pairs of a batch as one list (scalar prefetch of the Mosaic kernels).

  Entry ``t`` is the pair (``outer[t]``, ``inner[t]``): ``outer`` a flat block index
  ``b * n_outer + block`` of the axis the list is sorted by, ``inner`` a block of the
  other axis in the same row. q-major (forward, dQ): outer = q block, inner = kv
  block; kv-major (dK / dV): outer = kv block, inner = q block. Entries of one
  ``outer`` are consecutive, ``inner`` increasing; entries past ``count`` repeat
  entry ``count - 1`` (an index map on them asks for no new block).

  Attributes:
    outer, inner: ``[capacity] int32``.
    count: ``[] int32``, the entries to run, ``min(total, capacity)`` (the grid size).
    total: ``[] int32``, the pairs of the ranges; ``> capacity`` means entries are
      missing and the result must be poisoned (``flash_mixed_tpu_common.poison_if_over``).
  """
  outer: jax.Array
  inner: jax.Array
  count: jax.Array
  total: jax.Array


def flat_schedule(lo: jax.Array, hi: jax.Array, capacity: int, n_inner: int) -> Schedule:
  """Lists the pairs ``(p, x)`` with ``lo[p] <= x <= hi[p]``, ``p``-major, ``x`` ascending.

  The megablox ``gmm`` recipe (``make_group_metadata``): a static-length list and a
  real count that becomes a dynamic grid size.

  Args:
    lo, hi: ``[P] int32`` inclusive ranges per flat outer block (``hi < lo``: none),
      e.g. ``BlockRanges.kv_lo / kv_hi`` (q-major) or ``q_lo / q_hi`` (kv-major).
    capacity: static list length (``B * pair_bound``).
    n_inner: blocks of the inner axis (indices are clipped into ``[0, n_inner)``).

  Returns:
    ``Schedule`` (see its docstring).
  """
  counts = jnp.maximum(hi - lo + 1, 0)
  ends = jnp.cumsum(counts)
  total = ends[-1].astype(jnp.int32)
  t = jnp.minimum(jnp.arange(capacity, dtype=jnp.int32), jnp.maximum(total - 1, 0))
  p = jnp.minimum(jnp.searchsorted(ends, t, side="right", method="sort"), lo.shape[0] - 1)
  # Entry t of outer block p is inner block lo[p] + (t - first entry of p): one gather.
  x = jnp.clip(t + (lo - ends + counts)[p], 0, n_inner - 1)
  return Schedule(p.astype(jnp.int32), x.astype(jnp.int32),
                  jnp.minimum(total, capacity).astype(jnp.int32), total)


def block_ranges(bounds: TokenBounds, block_q: int, block_kv: int,
                 kv_len: int | None = None) -> BlockRanges:
  """Per q block the kv block range, per kv block the q block range.

  The query rows need not be the whole sequence: under context parallelism a
  device holds ``Sq`` consecutive rows of a longer sequence while the bounds are
  key positions in the whole (all-gathered) ``kv_len``-token sequence.

  Args:
    bounds: ``TokenBounds`` of ``[B, Sq]`` (key positions in ``[0, kv_len)``),
      ``Sq`` a multiple of ``block_q``.
    block_q: q block size in tokens.
    block_kv: kv block size in tokens.
    kv_len: key sequence length, a multiple of ``block_kv``; default ``Sq``.

  Returns:
    ``BlockRanges`` (see its docstring; ``nq = Sq / block_q``,
    ``nk = kv_len / block_kv``). The (q, kv) pairs visited by the forward and by
    the dK / dV pass are the same set.

  Raises:
    ValueError: a length not a multiple of its block size.
  """
  b, s = bounds.start.shape
  kv_len = s if kv_len is None else kv_len
  if s % block_q or kv_len % block_kv:
    raise ValueError(f"Query length {s} / key length {kv_len} not multiples of blocks "
                     f"{block_q} / {block_kv}.")
  nq, nk = s // block_q, kv_len // block_kv
  start_b = bounds.start.reshape(b, nq, block_q)
  limit_b = bounds.limit.reshape(b, nq, block_q)
  kv_lo = start_b.min(-1) // block_kv
  kv_hi = limit_b.max(-1) // block_kv
  # Mirror: q blocks i with kv_lo[i] <= j <= kv_hi[i]. An interval when the ranges
  # are non-decreasing; otherwise [first, last] is a superset and the in-kernel mask
  # keeps the result exact.
  j = jnp.arange(nk, dtype=jnp.int32)
  visits = (kv_lo[:, :, None] <= j) & (j <= kv_hi[:, :, None])      # [B, nq, nk]
  any_visit = visits.any(1)
  q_lo = jnp.argmax(visits, axis=1).astype(jnp.int32)
  q_hi = (nq - 1 - jnp.argmax(visits[:, ::-1], axis=1)).astype(jnp.int32)
  q_lo = jnp.where(any_visit, q_lo, 0)
  q_hi = jnp.where(any_visit, q_hi, -1)
  flat = lambda x: x.reshape(-1).astype(jnp.int32)
  return BlockRanges(flat(kv_lo), flat(kv_hi), flat(start_b.max(-1)),
                     flat(limit_b.min(-1)), flat(q_lo), flat(q_hi))


def block_counts(segment_ids: jax.Array, unit_ids: jax.Array, block_q: int,
                 block_kv: int) -> dict[str, int]:
  """Counts for the benchmark: kv blocks visited vs blocks holding a visible pair.

  Args:
    segment_ids, unit_ids: ``[B, S] int32`` as in ``token_bounds``; ``S`` a multiple
      of both block sizes.
    block_q, block_kv: block sizes in tokens.

  Returns:
    ``{"visited", "nonempty", "full", "dense"}`` summed over the batch: blocks the
    kernel visits, blocks with >= 1 visible pair, blocks whose pairs are all visible
    (the kernel skips their mask arithmetic) and all blocks. Visibility per row from
    the interval form (``[B, S, nk]`` memory, not ``[B, S, S]``); the tests check it
    against the dense mask.
  """
  b, s = segment_ids.shape
  nq, nk = s // block_q, s // block_kv
  tb = token_bounds(segment_ids, unit_ids)
  r = block_ranges(tb, block_q, block_kv)
  visited = int(jnp.sum(r.kv_hi - r.kv_lo + 1))
  j0 = jnp.arange(nk, dtype=jnp.int32) * block_kv
  j1 = j0 + block_kv - 1
  row_any = (tb.start[..., None] <= j1) & (tb.limit[..., None] >= j0)   # [B, S, nk]
  row_all = (tb.start[..., None] <= j0) & (tb.limit[..., None] >= j1)
  nonempty = int(jnp.sum(row_any.reshape(b, nq, block_q, nk).any(2)))
  full = int(jnp.sum(row_all.reshape(b, nq, block_q, nk).all(2)))
  return {"visited": visited, "nonempty": nonempty, "full": full, "dense": b * nq * nk}
