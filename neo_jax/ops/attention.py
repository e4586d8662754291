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
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
      return _sharded_kernel(mesh, q, k, v, segment_ids, unit_ids, scale=scale,
                             block_q=block_q, block_kv=block_kv)
    return flash_mixed.flash_mixed_attention(
        q, k, v, segment_ids, unit_ids, scale=scale, block_q=block_q, block_kv=block_kv)
  raise ValueError(f"Unknown attention impl {impl!r}; use 'xla', 'pallas' or 'auto'.")


def _mesh_axes(logical: str):
  """Mesh axes of a logical axis under the Flax rules in context (None if unsharded)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  axes = nn.logical_to_mesh_axes((logical,))[0]
  return axes


def _sharded_kernel(mesh, q, k, v, segment_ids, unit_ids, *, scale, block_q, block_kv):
  """The Pallas kernel on each shard of a jitted, mesh-sharded step.

  A Pallas call cannot be partitioned by XLA's SPMD partitioner, so inside a
  train step traced under a mesh (``trainer.Setup``) the kernel runs under
  ``shard_map`` over the mesh axes named by the logical rules in context
  (``batch``, ``heads``, and ``length``). With the sequence sharded (a ``context``
  axis of size > 1) each shard runs its query rows against the all-gathered keys
  and values (``flash_mixed.context_parallel_flash_mixed_attention``). The target
  platform comes from the mesh's devices (so AOT compiles for TPU from a CPU host
  compile Mosaic, not the interpreter).

  Raises:
    ValueError: heads or sequence not divisible by their mesh axes.
  """
  from neo_jax.ops import flash_mixed  # pylint: disable=g-import-not-at-top
  length = _mesh_axes("length")
  length = (length,) if isinstance(length, str) else tuple(length or ())
  length = tuple(a for a in length if mesh.shape[a] > 1)
  batch_axes = _mesh_axes("batch")
  head_axis = _mesh_axes("heads")
  if isinstance(head_axis, tuple):
    head_axis = head_axis[0] if len(head_axis) == 1 else None
  platform = mesh.abstract_device.platform if mesh.abstract_device else jax.default_backend()
  interpret = {"tpu": False, "cpu": True}.get(platform)  # None: GPU (Triton path)
  kwargs = dict(batch_axes=batch_axes, head_axis=head_axis, scale=scale,
                block_q=block_q, block_kv=block_kv, interpret=interpret)
  if length:
    return flash_mixed.context_parallel_flash_mixed_attention(
        mesh, q, k, v, segment_ids, unit_ids,
        context_axes=length[0] if len(length) == 1 else length, **kwargs)
  return flash_mixed.sharded_flash_mixed_attention(
      mesh, q, k, v, segment_ids, unit_ids, **kwargs)
