"""Attention with NEO's mixed mask: one entry point, reference XLA path.

``attention`` is what the model calls. ``impl="xla"`` runs
``reference_attention`` (dense mask, float32 softmax); ``"pallas"`` runs the
block-sparse kernel (``ops/flash_mixed.py``) and ``"auto"`` picks the kernel
on TPU / GPU and the reference elsewhere.

Shapes: queries and keys are ``2 * head_dim`` wide (the [T | H | W] branches of
NEO_SPEC §1.2), values ``head_dim`` wide; GQA with ``num_heads`` a multiple of
``num_kv_heads`` (query head ``h`` uses kv head ``h // (num_heads // num_kv_heads)``,
the ``repeat_kv`` order of Qwen3).
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
      original head_dim, not ``2 * head_dim``; NEO_SPEC §1.2).

  Returns:
    ``[B, S, Hq, Dv]`` in ``q.dtype``. Scores and softmax in float32.

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
  m = mask_lib.mixed_mask(segment_ids, unit_ids)[:, None, None]
  scores = jnp.where(m, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum("bhgqk,bkhd->bqhgd", probs.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return out.reshape(b, s, hq, v.shape[-1]).astype(q.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array,
              segment_ids: jax.Array, unit_ids: jax.Array, *, scale: float,
              impl: str = "xla", block_q: int = 512, block_kv: int = 512) -> jax.Array:
  """Mixed-mask attention, dispatching to the reference or the Pallas kernel.

  Args: as ``reference_attention``; ``impl`` in {"xla", "pallas", "auto"},
    ``block_q`` / ``block_kv`` the kernel's block sizes in tokens.

  Returns:
    ``[B, S, Hq, Dv]`` in ``q.dtype``.

  Raises:
    ValueError: unknown ``impl``.
  """
  if impl == "auto":
    impl = "pallas" if jax.default_backend() in ("tpu", "gpu") else "xla"
  if impl == "xla":
    return reference_attention(q, k, v, segment_ids, unit_ids, scale=scale)
  if impl == "pallas":
    from neo_jax.ops import flash_mixed  # pylint: disable=g-import-not-at-top
    return flash_mixed.flash_mixed_attention(
        q, k, v, segment_ids, unit_ids, scale=scale, block_q=block_q, block_kv=block_kv)
  raise ValueError(f"Unknown attention impl {impl!r}; use 'xla', 'pallas' or 'auto'.")
