"""Test defaults: JAX on the CPU with 8 fake devices, float64 available for references."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
# Two pytest-xdist workers may both AOT-compile for TPU through libtpu; its
# single-user lockfile is for processes that own TPU chips (none here).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# One persistent XLA compilation cache for the suite and the CLIs its tests start: the
# multi-process tests compile the same train step in every run they make (reference,
# interrupted, resumed); later runs load it. Keys hash the HLO, the flags and the jax
# version, so an entry is reused only for the same program. Bounded, with file locks
# (two xdist workers share it).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"neo_jax_test_jit_cache_{os.getuid()}"))
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))
# Cloud clients stay on loopback (testlib/gcs.py): no credential probe leaves the
# machine, and any Python connection to another address fails the test.
from testlib import gcs as _gcs  # noqa: E402
for _k, _v in _gcs.STATIC_ENV.items():
  os.environ.setdefault(_k, _v)
from neo_jax import platform as _platform  # noqa: E402
_platform.guard_network()

import jax  # noqa: E402  (after the environment above is set)
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def devices8() -> np.ndarray:
  """The 8 (fake) CPU devices of the environment above, as a numpy array.

  Fails instead of skipping: the suite is meant to run with 8 devices."""
  devices = np.array(jax.devices()[:8])
  assert devices.size == 8, (f"expected 8 devices (XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}), "
                             f"got {devices.size}")
  return devices


@pytest.fixture(scope="session")
def gcs_emulator():
  """A fake-gcs-server on loopback for this test process; its environment is set in
  ``os.environ`` (inherited by the CLIs the tests start) until the session ends."""
  emu = _gcs.Emulator()
  saved = {k: os.environ.get(k) for k in emu.env}
  os.environ.update(emu.env)
  yield emu
  emu.stop()
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


@pytest.fixture
def faulty_gcs(gcs_emulator):
  """A fault-injecting proxy (``testlib/faulty_proxy.py``) in front of the session's
  emulator; while the test runs, ``os.environ`` (inherited by the CLIs it starts) points
  gcsfs and tensorstore at the proxy. Add rules with ``faulty_gcs.add(Fault(...))``."""
  from testlib import faulty_proxy  # pylint: disable=import-outside-toplevel
  proxy = faulty_proxy.FaultyProxy(gcs_emulator.url)
  proxy.emulator = gcs_emulator
  saved = {k: os.environ.get(k) for k in proxy.env}
  os.environ.update(proxy.env)
  yield proxy
  proxy.stop()
  os.environ.update({k: v for k, v in saved.items() if v is not None})
