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


def guard_network() -> bool:
  """With ``NEO_JAX_LOOPBACK_ONLY=1``, makes every Python socket connection to a
  non-loopback address raise ``ConnectionRefusedError`` (naming the address).

  The test suite sets it for the CLIs it starts, so a client that looks for cloud
  credentials (the GCE metadata server at 169.254.169.254) or a real endpoint fails
  the test instead of sending traffic. Connections made by native libraries
  (tensorstore) bypass Python's sockets: their endpoints are pointed at loopback by
  environment variables instead. Returns whether the guard was installed.

  An explicit opt-in, not test support: without the variable nothing happens. It lives
  in the package because the processes it must reach are the CLIs themselves, started
  by launchers, on stand-in pod workers and under SLURM stand-ins, where only the
  environment travels (a conftest or a ``sitecustomize`` on ``PYTHONPATH`` would not);
  and a user checking a run against an emulator gets the same guarantee
  (README.md, "Running on pods and clusters").
  """
  if os.environ.get("NEO_JAX_LOOPBACK_ONLY") != "1":
    return False
  import ipaddress  # pylint: disable=import-outside-toplevel
  import socket  # pylint: disable=import-outside-toplevel
  if getattr(socket.socket.connect, "_neo_jax_guard", False):
    return True
  original = socket.socket.connect
  original_ex = socket.socket.connect_ex

  def check(address):
    if not isinstance(address, tuple):   # a Unix socket path
      return
    host = address[0]
    try:
      loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
      loopback = host == "localhost"
    if not loopback:
      raise ConnectionRefusedError(f"NEO_JAX_LOOPBACK_ONLY: refused a connection to {address}.")

  def connect(self, address):
    check(address)
    return original(self, address)

  def connect_ex(self, address):
    check(address)
    return original_ex(self, address)

  connect._neo_jax_guard = True  # pylint: disable=protected-access
  socket.socket.connect = connect
  socket.socket.connect_ex = connect_ex
  return True
