"""Rotary position embeddings: the LLM's ``rotate_half`` form and the vision 2D form.

Angles are computed in float32 from integer positions:
``inv_freq_i = theta ** (-2 i / dim)``, ``angle = pos * inv_freq``
(Su et al., RoFormer; Qwen3 / the release's ``Qwen3RotaryEmbedding`` and
``precompute_rope_freqs_sincos`` in ``modeling_neo_vit.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _angles(positions: jax.Array, dim: int, theta: float) -> jax.Array:
  """``[..., dim // 2] float32`` rotation angles for integer ``positions [...]``."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  return positions.astype(jnp.float32)[..., None] * inv_freq


def apply_rope_half(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """RoPE in the ``rotate_half`` convention (pairs channel i with i + dim/2).

  Args:
    x: ``[B, S, H, dim]`` any float dtype.
    positions: ``[B, S]`` integers.
    theta: RoPE base.

  Returns:
    ``[B, S, H, dim]`` in ``x.dtype``; the rotation is computed in float32.
  """
  dim = x.shape[-1]
  ang = _angles(positions, dim, theta)[:, :, None, :]  # [B, S, 1, dim/2]
  cos, sin = jnp.cos(ang), jnp.sin(ang)
  xf = x.astype(jnp.float32)
  x1, x2 = xf[..., : dim // 2], xf[..., dim // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def mrope_sections(dim: int) -> tuple[int, int, int]:
  """Frequencies of the (t, h, w) sections of Qwen2-VL's mRoPE for a ``dim``-wide head:
  ``(half - 2 s, s, s)`` with ``half = dim / 2`` and ``s = 3 half / 8`` (Qwen2-VL's
  ``mrope_section = [16, 24, 24]`` at ``dim = 128``)."""
  half = dim // 2
  s = 3 * half // 8
  return half - 2 * s, s, s


def apply_mrope_half(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Qwen2-VL's multimodal RoPE in the ``rotate_half`` convention.

  Frequency ``i`` of the ``dim / 2`` rotates by the t, h or w index of its section
  (``mrope_sections``), as ``apply_multimodal_rotary_pos_emb`` in transformers'
  ``modeling_qwen2_vl.py``; with t = h = w (text) it equals ``apply_rope_half`` on t.

  Args:
    x: ``[B, S, H, dim]``.
    positions: ``[B, S, 3] int`` (t, h, w).
    theta: RoPE base.

  Returns:
    ``[B, S, H, dim]`` in ``x.dtype`` (computed in float32).
  """
  dim = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  section = jnp.repeat(jnp.arange(3), jnp.asarray(mrope_sections(dim)),
                       total_repeat_length=dim // 2)
  pos = jnp.take(positions.astype(jnp.float32), section, axis=-1)   # [B, S, dim/2]
  ang = (pos * inv_freq)[:, :, None, :]
  cos, sin = jnp.cos(ang), jnp.sin(ang)
  xf = x.astype(jnp.float32)
  x1, x2 = xf[..., : dim // 2], xf[..., dim // 2:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def apply_rope_interleaved(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """RoPE on interleaved pairs (channel 2i with 2i + 1).

  Args:
    x: ``[..., dim]``.
    positions: ``[...]`` integers, same leading shape as ``x``.
    theta: RoPE base.

  Returns:
    ``[..., dim]`` in ``x.dtype`` (computed in float32).
  """
  dim = x.shape[-1]
  ang = _angles(positions, dim, theta)
  cos, sin = jnp.cos(ang), jnp.sin(ang)
  xf = x.astype(jnp.float32)
  x1, x2 = xf[..., 0::2], xf[..., 1::2]
  out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)


def apply_rope_2d_vision(x: jax.Array, pos_x: jax.Array, pos_y: jax.Array,
                         theta: float) -> jax.Array:
  """The patch embedder's 2D RoPE (docs/design.md §1.1; release ``modeling_neo_vit.py``).

  The first half of the channels is rotated by the patch column ``pos_x``, the
  second half by the patch row ``pos_y``, each on interleaved pairs with base
  ``theta`` over ``dim / 2`` channels.

  Args:
    x: ``[..., V]``.
    pos_x, pos_y: ``[...]`` integer patch coordinates.
    theta: ``rope_theta_vision``.

  Returns:
    ``[..., V]`` in ``x.dtype``.
  """
  half = x.shape[-1] // 2
  return jnp.concatenate([
      apply_rope_interleaved(x[..., :half], pos_x, theta),
      apply_rope_interleaved(x[..., half:], pos_y, theta),
  ], axis=-1)
