"""Which attention implementation and which kernel backend run: the one place it is decided.

Two questions, both answered from the target platform (``"tpu"``, ``"gpu"``,
``"cpu"``), which is the platform of the mesh in context when there is one (so an
AOT compile for a TPU topology on a CPU host chooses as a TPU would), else
``jax.default_backend()``:

* ``resolve_attention_impl``: what ``model.attention_impl = "auto"`` means:
  the Pallas kernel on TPU, the plain-JAX block-sparse attention
  (``xla_blockwise``, ``ops/flash_blockwise.py``) elsewhere. On GPU too, for now:
  the Triton kernels have only run in interpret mode (no GPU was lent to this
  project's sessions), so ``auto`` does not send a GPU run to them, and says so
  in the log; ``attention_impl="pallas"`` still selects them. ``"xla"`` (the
  dense reference, ``[S, S]`` scores per head) is the tests' oracle.
* ``kernel_backend``: which kernels ``ops/flash_mixed.py`` runs: ``"mosaic"``
  (``flash_mixed_tpu``) on TPU, ``"triton"`` (``flash_mixed_gpu``) on GPU and
  ``"interpret"`` (the Mosaic kernels in Pallas' interpreter) elsewhere.
"""

from __future__ import annotations

import functools

from absl import logging
import jax

from neo_jax.ops.impls import ATTENTION_IMPLS  # the one list (importable without JAX)


def target_platform(mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None = None) -> str:
  """The platform code is traced for: ``mesh``'s, else the abstract mesh in context's,
  else ``jax.default_backend()``."""
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
  device = getattr(mesh, "abstract_device", None) if mesh is not None and not mesh.empty else None
  return device.platform if device is not None else jax.default_backend()


def resolve_attention_impl(impl: str, platform: str | None = None) -> str:
  """``"xla"``, ``"xla_blockwise"`` or ``"pallas"`` for a configured ``impl`` on ``platform``.

  Raises:
    ValueError: ``impl`` not one of ``ATTENTION_IMPLS``.
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"Unknown attention impl {impl!r}; use one of {ATTENTION_IMPLS}.")
  if impl != "auto":
    return impl
  platform = platform or target_platform()
  if platform == "gpu":
    _warn_gpu_auto()
  return "pallas" if platform == "tpu" else "xla_blockwise"


@functools.cache
def _warn_gpu_auto() -> None:
  logging.warning("attention_impl='auto' on GPU runs the plain-JAX block-sparse attention "
                  "(xla_blockwise): the Triton kernel has not been run on a GPU yet. Set "
                  "model.attention_impl='pallas' to use it.")


def kernel_backend(platform: str | None = None, interpret: bool | None = None) -> str:
  """The kernel backend for ``platform``; ``interpret`` forces the Mosaic kernels
  interpreted (True) or compiled (False, e.g. AOT for TPU from a CPU host)."""
  if interpret is not None:
    return "interpret" if interpret else "mosaic"
  platform = platform or target_platform()
  return {"tpu": "mosaic", "gpu": "triton"}.get(platform, "interpret")
