"""Native-RoPE indices and visual-unit ids, computed from token ids (docs/design.md §1.3).

Pure ``jnp`` functions, traced inside the jitted model so that the data
pipeline ships only token ids, packing ids and visual-token coordinates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _segment_starts(segment_ids: jax.Array) -> jax.Array:
  """``[B, S] bool``: True at the first token of every run of equal segment ids."""
  b = segment_ids.shape[0]
  return jnp.concatenate(
      [jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)


def segment_cumsum(x: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """Inclusive cumulative sum of ``x`` restarting at every packed sample.

  Args:
    x: ``[B, S]`` non-negative integers.
    segment_ids: ``[B, S] int32``; samples contiguous.

  Returns:
    ``[B, S] int32``.
  """
  x = x.astype(jnp.int32)
  c = jnp.cumsum(x, axis=1)
  # c is non-decreasing, so the running max of "c before the start" is the
  # value to subtract for every token of the current sample.
  base = jax.lax.cummax(jnp.where(_segment_starts(segment_ids), c - x, 0), axis=1)
  return c - base


def segment_total(x: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """Sum of non-negative ``x`` over each token's packed sample, ``[B, S] int32``."""
  x = x.astype(jnp.int32)
  g = jnp.cumsum(x, axis=1)  # over the whole row: non-decreasing
  before = g - segment_cumsum(x, segment_ids)  # row sum before the token's sample
  b = segment_ids.shape[0]
  is_end = jnp.concatenate(
      [segment_ids[:, 1:] != segment_ids[:, :-1], jnp.ones((b, 1), bool)], axis=1)
  big = jnp.iinfo(jnp.int32).max
  # g is non-decreasing along the row, so the smallest end mark at or to the
  # right of a token is its own sample's end. (The per-sample cumsum restarts
  # at every sample, so its minimum to the right would be a later sample's.)
  g_end = jax.lax.cummin(jnp.where(is_end, g, big), axis=1, reverse=True)
  return g_end - before


def unit_ids(input_ids: jax.Array, *, img_start_id: int, img_context_id: int) -> jax.Array:
  """Visual-unit ids of the mixed mask (docs/design.md §1.4).

  Args:
    input_ids: ``[B, S] int32``.
    img_start_id / img_context_id: ids of ``<img>`` and ``<IMG_CONTEXT>``.

  Returns:
    ``[B, S] int32``: for an ``<IMG_CONTEXT>`` token, the number of ``<img>``
    tokens up to it in the sequence (unique per image / frame, >= 1); 0 for
    every other token.
  """
  n = jnp.cumsum((input_ids == img_start_id).astype(jnp.int32), axis=1)
  return jnp.where(input_ids == img_context_id, n, 0)


def native_rope_positions(input_ids: jax.Array, segment_ids: jax.Array,
                          token_hw: jax.Array, *, img_start_id: int,
                          img_context_id: int) -> jax.Array:
  """t / h / w indices of every token (docs/design.md §1.3, the release's formula).

  ``t = cumsum(shift(is_img_start) + (token != IMG_CONTEXT)) - 1`` per packed
  sample: every text token advances t by one; all visual tokens of one image
  share ``t(<img>) + 1``; ``</img>`` gets that + 1. h / w are the visual
  token's row / column in its image's token grid, 0 for text.

  Args:
    input_ids: ``[B, S] int32``.
    segment_ids: ``[B, S] int32`` packed-sample ids (t restarts at 0 for each).
    token_hw: ``[B, S, 2] int32`` (row, col) of visual tokens.
    img_start_id / img_context_id: token ids of ``<img>`` / ``<IMG_CONTEXT>``.

  Returns:
    ``[B, S, 3] int32`` with (t, h, w) in the last axis.
  """
  is_start = (input_ids == img_start_id).astype(jnp.int32)
  is_ctx = input_ids == img_context_id
  shifted = jnp.pad(is_start, ((0, 0), (1, 0)))[:, :-1]
  inc = shifted + (~is_ctx).astype(jnp.int32)
  t = segment_cumsum(inc, segment_ids) - 1
  hw = jnp.where(is_ctx[..., None], token_hw, 0)
  return jnp.concatenate([t[..., None], hw], axis=-1).astype(jnp.int32)


def one_d_positions(segment_ids: jax.Array) -> jax.Array:
  """``rope_mode="1d"``: t = running index in the packed sample, h = w = 0, ``[B, S, 3]``."""
  t = segment_cumsum(jnp.ones_like(segment_ids), segment_ids) - 1
  return jnp.stack([t, jnp.zeros_like(t), jnp.zeros_like(t)], axis=-1).astype(jnp.int32)


def mrope_positions(input_ids: jax.Array, segment_ids: jax.Array, token_hw: jax.Array, *,
                    img_start_id: int, img_context_id: int) -> jax.Array:
  """``rope_mode="mrope"``: Qwen2-VL's multimodal RoPE indices (``get_rope_index`` of
  transformers' ``modeling_qwen2_vl.py``), per packed sample, ``[B, S, 3]``.

  A text token's (t, h, w) are all its running position p. The visual tokens of an
  image starting where the next text position s would be get ``(s, s + row,
  s + col)``; the token after the image continues at ``s + max(grid_h, grid_w)``
  (one more than the image's largest index). ``<img>`` / ``</img>`` are text.
  """
  units = unit_ids(input_ids, img_start_id=img_start_id, img_context_id=img_context_id)
  is_ctx = units > 0
  s = input_ids.shape[1]

  def extent(u, hw):   # [S]: max(grid_h, grid_w) of each token's image
    size = jnp.maximum(hw[:, 0], hw[:, 1]) + 1
    per_unit = jax.ops.segment_max(jnp.where(u > 0, size, 0), u, num_segments=s + 1)
    return per_unit[u]

  ext = jax.vmap(extent)(units, token_hw)
  last = is_ctx & jnp.concatenate([units[:, 1:] != units[:, :-1],
                                   jnp.ones_like(units[:, :1], bool)], axis=1)
  inc = jnp.where(is_ctx, jnp.where(last, ext, 0), 1)
  base = segment_cumsum(inc, segment_ids) - inc          # exclusive running position
  hw = jnp.where(is_ctx[..., None], token_hw, 0)
  return jnp.stack([base, base + hw[..., 0], base + hw[..., 1]], axis=-1).astype(jnp.int32)


def rope_positions(mode: str, input_ids: jax.Array, segment_ids: jax.Array,
                   token_hw: jax.Array, *, img_start_id: int, img_context_id: int) -> jax.Array:
  """The ``[B, S, 3]`` RoPE indices of ``model.rope_mode`` ("native" | "1d" | "mrope").

  Raises:
    ValueError: unknown mode.
  """
  if mode == "native":
    return native_rope_positions(input_ids, segment_ids, token_hw, img_start_id=img_start_id,
                                 img_context_id=img_context_id)
  if mode == "1d":
    return one_d_positions(segment_ids)
  if mode == "mrope":
    return mrope_positions(input_ids, segment_ids, token_hw, img_start_id=img_start_id,
                           img_context_id=img_context_id)
  raise ValueError(f"Unknown rope_mode {mode!r}; use native, 1d or mrope.")


def first_true_positions(mask: jax.Array, m: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The first ``m`` True positions of each row, for a static-shape gather.

  Shared by the LM head's supervised gather (``loss.make_targets``) and the patch
  embedder's visual gather (``visual_gather.visual_slots``).

  Args:
    mask: ``[B, S] bool``.
    m: slots per row, ``m > 0`` (``min(m, S)`` are returned).

  Returns:
    ``(index [B, m'] int32, keep [B, m'] bool, count [B] int32)``: the True positions in
    sequence order, then other positions (stable order); ``keep`` marks the slots that
    hold a True position; ``count`` the True positions of each row (may exceed ``m``).
  """
  m = min(m, mask.shape[1])
  count = jnp.sum(mask, axis=1, dtype=jnp.int32)
  index = jnp.argsort(~mask, axis=1, stable=True)[:, :m].astype(jnp.int32)
  keep = jnp.arange(m)[None, :] < count[:, None]
  return index, keep, count
