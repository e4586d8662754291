"""Test defaults: JAX on the CPU with 8 fake devices, float64 available for references."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
# Two pytest-xdist workers may both AOT-compile for TPU through libtpu; its
# single-user lockfile is for processes that own TPU chips (none here).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
