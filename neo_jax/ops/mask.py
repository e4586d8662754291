"""The mixed causal / bidirectional mask of packed NEO sequences (docs/design.md §1.4).

Token ``i`` may attend token ``j`` iff

    seg_i == seg_j  and  (j <= i  or  (unit_i == unit_j and unit_i > 0))

where ``seg`` is the packed-sample id (0 = padding) and ``unit`` the visual-unit
id (0 = not a visual token, else unique per image / video frame). Causal across
text and across images, bidirectional inside one image or frame, nothing across
packed samples. A padding token (seg 0) sees only itself and real tokens never see
padding, so padding cannot leak into real tokens (docs/design.md §1.4 leaves padding's own
rows free: their outputs are never used; the diagonal keeps the kernels' work on a
padding run to one block per q block); every row keeps at least its diagonal, so no
softmax row is empty.

Equivalent "limit" form used by the kernel: with ``limit_i`` = index of the last
token of ``i``'s unit (``i`` itself for a non-visual token) and visual units
contiguous, a real token ``i`` may attend ``j`` iff ``seg_i == seg_j and j <= limit_i``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mixed_mask(segment_ids: jax.Array, unit_ids: jax.Array) -> jax.Array:
  """Dense mixed mask.

  Args:
    segment_ids: ``[B, S] int32`` packed-sample ids, 0 = padding.
    unit_ids: ``[B, S] int32`` visual-unit ids, 0 = non-visual.

  Returns:
    ``[B, S, S] bool``; ``[b, i, j]`` is True where query ``i`` may attend key ``j``.
  """
  s = segment_ids.shape[-1]
  idx = jnp.arange(s)
  causal = idx[None, :, None] >= idx[None, None, :]
  same_seg = segment_ids[:, :, None] == segment_ids[:, None, :]
  same_unit = (unit_ids[:, :, None] == unit_ids[:, None, :]) & (unit_ids[:, :, None] > 0)
  real_or_diagonal = (segment_ids[:, :, None] > 0) | (idx[None, :, None] == idx[None, None, :])
  return same_seg & (causal | same_unit) & real_or_diagonal


def visible_limit(unit_ids: jax.Array) -> jax.Array:
  """Last key index each query may see inside its own sample (the "limit" form).

  Args:
    unit_ids: ``[B, S] int32`` visual-unit ids; each unit's tokens contiguous.

  Returns:
    ``[B, S] int32``: for a visual token, the index of the last token of its
    unit; for any other token, its own index.
  """
  b, s = unit_ids.shape
  idx = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
  # Scan right to left: the last index of the current run of equal unit ids.
  is_last = jnp.concatenate(
      [unit_ids[:, 1:] != unit_ids[:, :-1], jnp.ones((b, 1), bool)], axis=1)
  marks = jnp.where(is_last, idx, s)
  run_end = jax.lax.cummin(marks, axis=1, reverse=True)
  return jnp.where(unit_ids > 0, run_end, idx).astype(jnp.int32)
