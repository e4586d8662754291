"""Dense mixed-mask attention: the oracle of the kernels and the ``xla`` path.

Materialises ``[B, Hkv, G, S, S]`` float32 scores, applies the mask of
``ops/mask.py`` and a float32 softmax. Shapes: queries and keys are
``2 * head_dim`` wide (the [T | H | W] branches of docs/design.md §1.2), values
``head_dim`` wide; GQA with query head ``h`` using kv head
``h // (num_heads // num_kv_heads)`` (the ``repeat_kv`` order of Qwen3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from neo_jax.ops import mask as mask_lib


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                        segment_ids: jax.Array, unit_ids: jax.Array,
                        *, scale: float) -> jax.Array:
  """Dense mixed-mask attention (the oracle for the kernel).

  Args:
    q: ``[B, S, Hq, Dqk]`` queries (any float dtype).
    k: ``[B, S, Hkv, Dqk]`` keys.
    v: ``[B, S, Hkv, Dv]`` values.
    segment_ids: ``[B, S] int32`` packed-sample ids (0 = padding).
    unit_ids: ``[B, S] int32`` visual-unit ids (0 = non-visual).
    scale: multiplier of the scores (NEO: ``head_dim ** -0.5`` with the
      original head_dim, not ``2 * head_dim``; docs/design.md §1.2).

  Returns:
    ``[B, S, Hq, Dv]`` in ``q.dtype``. Scores and softmax in float32.

  Raises:
    ValueError: ``Hq`` not a multiple of ``Hkv`` or mismatched widths.
  """
  m = mask_lib.mixed_mask(segment_ids, unit_ids)
  return masked_attention(q, k, v, m, scale=scale)


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                     *, scale: float) -> jax.Array:
  """Dense GQA attention under an explicit mask (the reference and a decode step).

  Args:
    q: ``[B, Sq, Hq, Dqk]``; k: ``[B, Sk, Hkv, Dqk]``; v: ``[B, Sk, Hkv, Dv]``.
    mask: ``[B, Sq, Sk] bool``, True where the query sees the key (every query row
      must see at least one key).
    scale: multiplier of the scores.

  Returns:
    ``[B, Sq, Hq, Dv]`` in ``q.dtype``. Scores and softmax in float32.

  Raises:
    ValueError: ``Hq`` not a multiple of ``Hkv`` or mismatched widths.
  """
  b, s, hq, dqk = q.shape
  hkv = k.shape[2]
  if hq % hkv or k.shape[-1] != dqk or v.shape[2] != hkv:
    raise ValueError(f"Incompatible shapes q{q.shape} k{k.shape} v{v.shape}.")
  g = hq // hkv
  qg = q.reshape(b, s, hkv, g, dqk)
  scores = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k,
                      preferred_element_type=jnp.float32) * scale
  scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum("bhgqk,bkhd->bqhgd", probs.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return out.reshape(b, s, hq, v.shape[-1]).astype(q.dtype)
