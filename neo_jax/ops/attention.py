"""Attention with NEO's mixed mask: the entry point the model calls, and its sharding.

``attention`` runs ``reference_attention`` (``impl="xla"``: dense mask, float32
softmax; the tests' oracle), the plain-JAX block-sparse attention
(``impl="xla_blockwise"``, ``ops/flash_blockwise.py``) or the block-sparse Pallas
kernel (``impl="pallas"``, ``ops/flash_mixed.py``); ``"auto"`` is resolved by
``ops/backend.py`` for the target platform. Inside a step traced under a mesh the
block-sparse paths run under ``shard_map`` (a Pallas call cannot be partitioned by
XLA's SPMD partitioner, and the blockwise loops index the batch and sequence
dynamically): over batch and heads (``sharded_flash_mixed_attention``), and with
the sequence sharded over a context axis in the all-gather form
(``context_parallel_flash_mixed_attention``).

Shapes: queries and keys are ``2 * head_dim`` wide (the [T | H | W] branches of
docs/design.md §1.2), values ``head_dim`` wide; GQA with ``num_heads`` a multiple of
``num_kv_heads`` (query head ``h`` uses kv head ``h // (num_heads // num_kv_heads)``,
the ``repeat_kv`` order of Qwen3).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from neo_jax.ops import backend, flash_blockwise, flash_mixed
from neo_jax.ops import block_ranges as br
from neo_jax.ops.reference import reference_attention

__all__ = ["attention", "reference_attention", "sharded_flash_mixed_attention",
           "context_parallel_flash_mixed_attention"]


def attention(q: jax.Array, k: jax.Array, v: jax.Array,
              segment_ids: jax.Array, unit_ids: jax.Array, *, scale: float,
              impl: str = "xla", block_q: int = 512, block_kv: int = 512,
              max_sample_tokens: int = 0) -> jax.Array:
  """Mixed-mask attention, dispatching to the reference, the blockwise path or the kernel.

  Args: as ``reference_attention``; ``impl`` in {"xla", "xla_blockwise", "pallas",
    "auto"}, ``block_q`` / ``block_kv`` the block sizes in tokens (blockwise and kernel),
    ``max_sample_tokens`` the packer's sample cap that sizes the Pallas kernel's schedule
    (0 = none; ``flash_mixed.flash_mixed_attention``; the other paths need no bound).

  Returns:
    ``[B, S, Hq, Dv]`` in ``q.dtype``.

  Raises:
    ValueError: unknown ``impl``; heads or sequence not divisible by their mesh axes.
  """
  impl = backend.resolve_attention_impl(impl)
  if impl == "xla":
    return reference_attention(q, k, v, segment_ids, unit_ids, scale=scale)
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.size > 1:
    return _sharded_kernel(mesh, q, k, v, segment_ids, unit_ids, scale=scale,
                           block_q=block_q, block_kv=block_kv, impl=impl,
                           max_sample_tokens=max_sample_tokens)
  if impl == "xla_blockwise":
    return flash_blockwise.blockwise_attention(q, k, v, segment_ids, unit_ids, scale=scale,
                                               block_q=block_q, block_kv=block_kv)
  return flash_mixed.flash_mixed_attention(q, k, v, segment_ids, unit_ids, scale=scale,
                                           block_q=block_q, block_kv=block_kv,
                                           max_sample_tokens=max_sample_tokens)


def _mesh_axes(logical: str):
  """Mesh axes of a logical axis under the Flax rules in context (None if unsharded)."""
  return nn.logical_to_mesh_axes((logical,))[0]


def _sharded_kernel(mesh, q, k, v, segment_ids, unit_ids, *, scale, block_q, block_kv,
                    impl="pallas", max_sample_tokens=0):
  """The Pallas kernel (or the blockwise path) on each shard of a jitted, mesh-sharded step.

  The kernel runs under ``shard_map`` over the mesh axes named by the logical
  rules in context (``batch``, ``heads``, and ``length``). With the sequence
  sharded (a ``context`` axis of size > 1) each shard runs its query rows against
  the all-gathered keys and values. The kernel backend follows the mesh's
  platform (so AOT compiles for TPU from a CPU host compile Mosaic, not the
  interpreter).

  Raises:
    ValueError: heads or sequence not divisible by their mesh axes.
  """
  length = _mesh_axes("length")
  length = (length,) if isinstance(length, str) else tuple(length or ())
  length = tuple(a for a in length if mesh.shape[a] > 1)
  batch_axes = _mesh_axes("batch")
  head_axis = _mesh_axes("heads")
  if isinstance(head_axis, tuple):
    head_axis = head_axis[0] if len(head_axis) == 1 else None
  if impl == "xla_blockwise" and (
      q.shape[0] % _axes_size(mesh, batch_axes) or k.shape[2] % _axes_size(mesh, head_axis)
      or q.shape[1] % _axes_size(mesh, length or None)):
    # A shape the mesh does not divide (an evaluation batch of 12 on 8 devices): plain
    # JAX needs no shard_map, XLA's partitioner pads or gathers as for the dense path.
    return flash_blockwise.blockwise_attention(q, k, v, segment_ids, unit_ids, scale=scale,
                                               block_q=block_q, block_kv=block_kv)
  kwargs = dict(batch_axes=batch_axes, head_axis=head_axis, scale=scale,
                block_q=block_q, block_kv=block_kv, impl=impl)
  if impl == "pallas":
    kwargs["platform"] = backend.target_platform(mesh)
    kwargs["max_sample_tokens"] = max_sample_tokens
  if length:
    return context_parallel_flash_mixed_attention(
        mesh, q, k, v, segment_ids, unit_ids,
        context_axes=length[0] if len(length) == 1 else length, **kwargs)
  return sharded_flash_mixed_attention(mesh, q, k, v, segment_ids, unit_ids, **kwargs)


def _axes_size(mesh, axes) -> int:
  """Product of the sizes of mesh ``axes`` (a name, a tuple of names or None)."""
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  return math.prod(mesh.shape[a] for a in axes)


def _check_heads(mesh, k, head_axis):
  if head_axis is not None and k.shape[2] % mesh.shape[head_axis]:
    raise ValueError(f"kv heads {k.shape[2]} not divisible by mesh axis "
                     f"{head_axis!r} of size {mesh.shape[head_axis]}.")


def sharded_flash_mixed_attention(mesh: jax.sharding.Mesh, q: jax.Array, k: jax.Array,
                                  v: jax.Array, segment_ids: jax.Array,
                                  unit_ids: jax.Array, *,
                                  batch_axes: tuple[str, ...] | str | None = ("data",
                                                                              "fsdp"),
                                  head_axis: str | None = "tensor",
                                  impl: str = "pallas", **kwargs) -> jax.Array:
  """``flash_mixed.flash_mixed_attention`` under ``shard_map`` over batch and heads.

  Each device runs the kernel on its batch shard and its heads (query and kv heads
  split the same way, so a GQA group stays on one device). The sequence is not
  sharded (see ``context_parallel_flash_mixed_attention`` for that).

  Args:
    mesh: the device mesh.
    q, k, v, segment_ids, unit_ids: as ``flash_mixed_attention``; ``B`` divisible by
      the product of the batch axes, ``Hkv`` by the head axis size.
    batch_axes: mesh axes of the batch dimension (the ``activation_batch`` rule).
    head_axis: mesh axis of the head dimension (the ``heads`` rule), or None.
    impl: "pallas" (the kernel) or "xla_blockwise" (``flash_blockwise``) per shard.
    **kwargs: forwarded to ``flash_mixed_attention`` / ``blockwise_attention``
      (``scale`` required).

  Returns:
    ``[B, S, Hq, Dv]``, sharded like ``q``.

  Raises:
    ValueError: heads not divisible by the head axis size.
  """
  p = jax.sharding.PartitionSpec
  _check_heads(mesh, k, head_axis)
  qkv_spec = p(batch_axes, None, head_axis, None)
  ids_spec = p(batch_axes, None)
  fn = functools.partial(flash_blockwise.blockwise_attention if impl == "xla_blockwise"
                         else flash_mixed.flash_mixed_attention, **kwargs)
  return jax.shard_map(fn, mesh=mesh,
                       in_specs=(qkv_spec, qkv_spec, qkv_spec, ids_spec, ids_spec),
                       out_specs=qkv_spec, check_vma=False)(
                           q, k, v, segment_ids, unit_ids)


def context_parallel_flash_mixed_attention(
    mesh: jax.sharding.Mesh, q: jax.Array, k: jax.Array, v: jax.Array,
    segment_ids: jax.Array, unit_ids: jax.Array, *,
    batch_axes: tuple[str, ...] | str | None = ("data", "fsdp"),
    head_axis: str | None = "tensor",
    context_axes: tuple[str, ...] | str = "context", impl: str = "pallas",
    **kwargs) -> jax.Array:
  """The kernel with the sequence sharded over ``context_axes`` (context parallelism).

  The all-gather form of context parallelism (as MaxText's default): device ``c``
  of ``C`` along the context axes holds query rows ``[c * S/C, (c + 1) * S/C)``; it
  all-gathers the keys, values and ids of the whole sequence, derives every row's
  visible key interval from the gathered ids (``block_ranges.token_bounds``), keeps
  its own rows' intervals and runs ``flash_mixed_attention_bounds`` on its rows
  against all keys. The kernel visits only the kv blocks its rows can see (for a
  causal layout, none after the shard). In the backward, the transpose of the
  all-gather reduce-scatters dK / dV back to the owning shards.

  Per device memory: the gathered keys / values ``B/D x S x Hkv/T x (Dqk + Dv)``
  (one layer at a time), the rest ``1/C`` of the unsharded kernel's.

  Args:
    mesh: the device mesh.
    q, k, v, segment_ids, unit_ids: as ``flash_mixed_attention``; ``B`` divisible by
      the batch axes' size, ``S`` by the context axes' size, ``Hkv`` by the head
      axis size.
    batch_axes: mesh axes of the batch dimension (``batch`` rule).
    head_axis: mesh axis of the heads (``heads`` rule), or None.
    context_axes: mesh axes of the sequence (``length`` rule).
    impl: "pallas" (the kernel) or "xla_blockwise" (``flash_blockwise``) per shard.
    **kwargs: forwarded to ``flash_mixed_attention_bounds`` /
      ``blockwise_attention_bounds`` (``scale`` required).

  Returns:
    ``[B, S, Hq, Dv]``, sharded like ``q``.

  Raises:
    ValueError: heads or sequence not divisible by their mesh axes.
  """
  p = jax.sharding.PartitionSpec
  _check_heads(mesh, k, head_axis)
  n_ctx = _axes_size(mesh, context_axes)
  if q.shape[1] % n_ctx:
    raise ValueError(f"Sequence length {q.shape[1]} not divisible by the context "
                     f"axes {context_axes!r} of total size {n_ctx}.")
  qkv_spec = p(batch_axes, context_axes, head_axis, None)
  ids_spec = p(batch_axes, context_axes)

  def local(q, k, v, seg, unit):
    gather = functools.partial(lax.all_gather, axis_name=context_axes, axis=1,
                               tiled=True)
    k, v, seg, unit = gather(k), gather(v), gather(seg), gather(unit)
    tb = br.token_bounds(seg.astype(jnp.int32), unit.astype(jnp.int32))
    rows = q.shape[1]
    offset = lax.axis_index(context_axes) * rows
    mine = lambda x: lax.dynamic_slice_in_dim(x, offset, rows, axis=1)
    fn = (flash_blockwise.blockwise_attention_bounds if impl == "xla_blockwise"
          else flash_mixed.flash_mixed_attention_bounds)
    return fn(q, k, v, br.TokenBounds(mine(tb.start), mine(tb.limit)), **kwargs)

  return jax.shard_map(local, mesh=mesh,
                       in_specs=(qkv_spec, qkv_spec, qkv_spec, ids_spec, ids_spec),
                       out_specs=qkv_spec, check_vma=False)(
                           q, k, v, segment_ids, unit_ids)
