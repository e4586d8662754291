"""Meshes and logical-axis sharding rules: the one place sharding is decided.

The model names logical axes only (``batch``, ``length``, ``embed``, ``heads``,
``kv_heads``, ``head_dim``, ``mlp``, ``vocab``, ``layers``, vision axes); the
config maps them to mesh axes (``data``, ``fsdp``, ``tensor``, ``context``),
MaxText style. A mesh axis already used by an earlier dimension of the same
array is skipped (Flax's resolution), so ``embed -> fsdp`` shards parameters
while activations ``(batch, length, embed)`` are sharded on the batch only.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "context")

DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", "context"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("patch", None),
    ("vision", None),
    ("vision_in", "fsdp"),
)


def resolve_mesh_shape(shape: dict[str, int], num_devices: int) -> tuple[int, ...]:
  """Mesh sizes in ``MESH_AXES`` order; one axis may be -1 ("fill").

  Raises:
    ValueError: more than one -1, or the sizes do not multiply to the devices.
  """
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}.")
  if -1 in sizes:
    rest = math.prod(s for s in sizes if s != -1)
    if num_devices % rest:
      raise ValueError(f"Cannot fill mesh {dict(zip(MESH_AXES, sizes))} on {num_devices} devices.")
    sizes[sizes.index(-1)] = num_devices // rest
  if math.prod(sizes) != num_devices:
    raise ValueError(f"Mesh {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} devices; "
                     f"{num_devices} are available. Set one axis to -1 to fill.")
  return tuple(sizes)


def make_mesh(shape: dict[str, int], devices: Sequence[Any] | None = None,
              dcn_shape: dict[str, int] | None = None) -> Mesh:
  """Builds the device mesh with axes ``MESH_AXES``.

  Args:
    shape: per-slice sizes (ICI), e.g. ``{"data": -1, "fsdp": 2, "tensor": 2}``.
    devices: defaults to ``jax.devices()``.
    dcn_shape: sizes across slices (DCN), multiplying to the number of slices the
      devices span (their ``slice_index``); the mesh axis ``a`` then has size
      ``shape[a] * dcn_shape[a]`` and ``mesh_utils.create_hybrid_device_mesh`` keeps
      each slice's devices in one ICI block of it (MaxText's ``dcn_*_parallelism``).
      None or all 1 = a single slice.

  Raises:
    ValueError: sizes inconsistent with the devices, a ``dcn_shape`` (> 1) that does not
      multiply to the number of slices, or TPU devices of several slices without one.
  """
  from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
  devices = list(devices if devices is not None else jax.devices())
  num_slices = len({getattr(d, "slice_index", 0) for d in devices})
  dcn_shape = dict(dcn_shape or {})
  dcn = (resolve_mesh_shape(dcn_shape, num_slices) if -1 in dcn_shape.values()
         else tuple(int(dcn_shape.get(a, 1)) for a in MESH_AXES))
  hint = (f"Multislice: set --config.dcn_mesh.data={num_slices} (or another axis) so that "
          f"dcn_mesh multiplies to the {num_slices} slices the devices span (slice_index)."
          if num_slices > 1 else "The devices form one slice: leave dcn_mesh at 1.")
  if math.prod(dcn) > 1 and math.prod(dcn) != num_slices:
    raise ValueError(f"dcn_mesh {dict(zip(MESH_AXES, dcn))} multiplies to {math.prod(dcn)} "
                     f"slices; the {len(devices)} devices span {num_slices}. " + hint)
  if math.prod(dcn) == 1 and num_slices > 1 and getattr(devices[0], "platform", "") == "tpu":
    # One ICI mesh over several TPU slices would put DCN links inside the inner axes.
    raise ValueError("The TPU devices span several slices and dcn_mesh is all 1. " + hint)
  if math.prod(dcn) > 1:
    ici = resolve_mesh_shape(shape, len(devices) // num_slices)
    try:
      arr = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    except NotImplementedError:
      # A per-slice shape that is no product of whole torus axes (fsdp=16, tensor=4,
      # context=2 on a 4x4x8 slice): split physical axes (MaxText's allow_split_physical_axes).
      arr = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                 allow_split_physical_axes=True)
  else:
    sizes = resolve_mesh_shape(shape, len(devices))
    try:
      arr = mesh_utils.create_device_mesh(sizes, devices)
    except (AssertionError, NotImplementedError, ValueError):
      arr = np.asarray(devices).reshape(sizes)
  return Mesh(arr, MESH_AXES)


def rules_from_config(rules) -> tuple:
  """Normalises config rules (list of [name, axis | [axes] | None]) to a tuple."""
  out = []
  for name, axes in rules:
    if isinstance(axes, (list, tuple)):
      axes = tuple(axes)
    out.append((name, axes))
  return tuple(out)


def logical_shardings(tree: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for a tree of boxed (``nn.Partitioned``) or abstract values.

  Leaves without logical names are replicated.
  """
  specs = nn.get_partition_spec(tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules_from_config(rules))


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
  """Sharding of a batch array ``[batch, length, ...]`` (batch and length axes)."""
  spec = nn.logical_to_mesh_axes(("batch", "length") + (None,) * (ndim - 2),
                                 rules_from_config(rules))
  return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_shardings_like_params(state: Any, params: Any, param_shardings: Any,
                                mesh: Mesh) -> Any:
  """Shardings for an optimizer state: each leaf whose key path ends with a
  parameter's path (and has its shape) gets that parameter's sharding; every
  other leaf (step counts, ...) is replicated.

  Matching by path works for any optax state, including ``multi_transform``
  states whose frozen parameters are ``MaskedNode``s (``optax.tree_map_params``
  rejects those), and needs no compilation (reading shardings off a compiled
  ``tx.init`` gives single-device shardings on compile-only TPU devices).
  """
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat_p = traverse_util.flatten_dict(params)
  flat_s = traverse_util.flatten_dict(param_shardings)
  depth = max(len(k) for k in flat_p)

  def pick(path, leaf):
    names = tuple(getattr(k, "key", None) for k in path)
    for n in range(min(depth, len(names)), 0, -1):
      key = names[-n:]
      if None not in key and key in flat_p and flat_p[key].shape == getattr(leaf, "shape", None):
        return flat_s[key]
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(pick, state)
