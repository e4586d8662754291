"""Default JAX platform for the command-line tools, chosen before JAX is imported.

With libtpu installed (the ``tpu`` extra, also pinned for CI's AOT tests), JAX
tries to initialise a TPU on any machine and prints pages of warnings on a host
without one. The CLIs therefore set ``JAX_PLATFORMS=cpu`` when the machine has
no accelerator device file; an explicit ``JAX_PLATFORMS`` always wins.
"""

from __future__ import annotations

import glob
import os

_ACCELERATOR_DEVICE_FILES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*", "/dev/kfd")


def has_accelerator() -> bool:
  """True if a TPU (``/dev/accel*``, ``/dev/vfio/N``) or GPU (``/dev/nvidiaN``,
  ``/dev/kfd``) device file exists."""
  return any(glob.glob(p) for p in _ACCELERATOR_DEVICE_FILES)


def select_default_platform() -> str | None:
  """Sets ``JAX_PLATFORMS=cpu`` on accelerator-less hosts unless already set.

  Must run before ``import jax``. Returns the value set, or None.
  """
  if "JAX_PLATFORMS" in os.environ or has_accelerator():
    return None
  os.environ["JAX_PLATFORMS"] = "cpu"
  return "cpu"
