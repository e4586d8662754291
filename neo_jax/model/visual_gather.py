"""Run the patch embedder on the visual positions only: a static gather of ``M`` per row.

The batch layout (``core/batch.py``) carries pixels at every position so shapes stay
static; embedding all ``S`` positions spends the patch embedder's two matmuls (and a
float32 copy of ``[B, S, 4, 3 P P]`` normalised pixels) on text and padding too. With
``model.max_visual_tokens = M > 0`` the first ``M`` ``<IMG_CONTEXT>`` positions of each
row are gathered (stable order), embedded as ``[B, M, ...]`` and scattered back, the
same pattern as the supervised-position gather of the loss (docs/design.md §3.6 performance
note). The packer enforces ``M`` per sequence; a row holding more visual tokens gets
NaN embeddings (never silently zero ones) and the train step reports the overflow as
``dropped_visual``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from neo_jax.model import positions as pos_lib

Array = jax.Array


class VisualSlots(NamedTuple):
  """The gathered visual positions of each row.

  Attributes:
    index: ``[B, M'] int32`` positions (``M' = min(M, S)``): the row's visual positions
      in sequence order, then other positions (unused slots).
    keep: ``[B, M'] bool`` slot holds a visual position.
    overflow: ``[B] bool`` the row has more than ``M`` visual positions.
  """
  index: Array
  keep: Array
  overflow: Array


def visual_slots(is_visual: Array, max_visual_tokens: int) -> VisualSlots:
  """Slots of the first ``max_visual_tokens`` visual positions of each row.

  Args:
    is_visual: ``[B, S] bool`` (``input_ids == img_context_token_id``).
    max_visual_tokens: ``M > 0``.

  Returns:
    ``VisualSlots``.

  Raises:
    ValueError: ``max_visual_tokens <= 0``.
  """
  if max_visual_tokens <= 0:
    raise ValueError(f"max_visual_tokens={max_visual_tokens} must be > 0 to gather.")
  index, keep, count = pos_lib.first_true_positions(is_visual, max_visual_tokens)
  return VisualSlots(index, keep, count > max_visual_tokens)


def embed_visual_gathered(embed: Callable[[Array, Array], Array], pixel_values: Array,
                          token_hw: Array, is_visual: Array,
                          max_visual_tokens: int) -> Array:
  """``embed`` on the gathered visual positions, scattered back to ``[B, S, D]``.

  Args:
    embed: ``(pixel_values [B, M, 4, 3PP], token_hw [B, M, 2]) -> [B, M, D]`` (the
      ``VisionEmbeddings`` module).
    pixel_values: ``[B, S, 4, 3 P P]``; token_hw: ``[B, S, 2] int32``.
    is_visual: ``[B, S] bool``.
    max_visual_tokens: ``M > 0``.

  Returns:
    ``[B, S, D]``: the embedding at each kept visual position, 0 elsewhere; every
    position of a row holding more than ``M`` visual tokens is NaN.
  """
  slots = visual_slots(is_visual, max_visual_tokens)
  take = lambda a: jnp.take_along_axis(
      a, slots.index.reshape(slots.index.shape + (1,) * (a.ndim - 2)), axis=1)
  vis = embed(take(pixel_values), take(token_hw))                   # [B, M', D]
  vis = jnp.where(slots.keep[..., None], vis, 0)
  b, s = is_visual.shape
  out = jnp.zeros((b, s, vis.shape[-1]), vis.dtype)
  out = jax.vmap(lambda o, i, v: o.at[i].set(v))(out, slots.index, vis)
  return jnp.where(slots.overflow[:, None, None], jnp.asarray(jnp.nan, out.dtype), out)


def dropped_visual(is_visual: Array, max_visual_tokens: int) -> Array:
  """Scalar int32: visual positions beyond ``max_visual_tokens`` summed over rows
  (0 when ``max_visual_tokens`` is 0: no gather)."""
  if max_visual_tokens <= 0:
    return jnp.zeros((), jnp.int32)
  count = jnp.sum(is_visual, axis=1)
  return jnp.sum(jnp.maximum(count - max_visual_tokens, 0)).astype(jnp.int32)
