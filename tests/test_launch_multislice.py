"""Multislice: ``dcn_mesh`` parses, the hybrid mesh keeps each slice in one ICI block, and
the train step compiles for 2 TPU slices (libtpu compile-only devices, ``neo_jax.aot``)."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from neo_jax.configs import smoke
from neo_jax import aot
from neo_jax.train import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeDevice:
  """What the mesh code reads of a device: id, platform, kind, slice_index."""

  def __init__(self, i, slice_index, platform="cpu"):
    self.id, self.slice_index, self.platform = i, slice_index, platform
    self.device_kind, self.process_index = "fake", slice_index

  def __repr__(self):
    return f"FakeDevice({self.id}, slice {self.slice_index})"


def _devices(num_slices, per_slice, platform="cpu"):
  # Interleaved order, as a device list of several processes need not be sorted by slice.
  devs = [FakeDevice(s * per_slice + k, s, platform)
          for k in range(per_slice) for s in range(num_slices)]
  return devs


def test_dcn_mesh_flag_parses_and_a_mismatch_is_a_clear_error(tmp_path):
  """``--config.dcn_mesh.data=2`` parses (the field has defaults, all 1); on the 8 CPU
  devices of one "slice" the trainer stops with the mesh's message."""
  assert dict(smoke.get_config().dcn_mesh) == {"data": 1, "fsdp": 1, "tensor": 1, "context": 1}
  r = subprocess.run([sys.executable, "-m", "neo_jax.train",
                      "--config=smoke:steps=1", f"--workdir={tmp_path}",
                      "--config.dcn_mesh.data=2"],
                     env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
                              XLA_FLAGS="--xla_force_host_platform_device_count=8"),
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode != 0
  assert ("dcn_mesh {'data': 2, 'fsdp': 1, 'tensor': 1, 'context': 1} multiplies to 2 slices; "
          "the 8 devices span 1") in r.stderr, r.stderr[-3000:]


@pytest.mark.parametrize("ici,dcn,num_slices,per_slice", [
    ({"data": 1, "fsdp": 4}, {"data": 2}, 2, 4),                      # data parallel across slices
    ({"data": 2, "fsdp": 2}, {"fsdp": 2}, 2, 4),                      # FSDP across slices
    ({"data": 1, "fsdp": 2, "tensor": 2}, {"data": 2, "fsdp": 2}, 4, 4),
    ({"data": 1, "fsdp": -1}, {"data": -1}, 2, 8),                    # both filled
])
def test_hybrid_mesh_puts_each_slice_in_its_dcn_block(ici, dcn, num_slices, per_slice):
  """Mesh axis a = ici[a] x dcn[a]; the device at index i belongs to the slice numbered by
  the DCN coordinates ``i[a] // ici[a]`` (row-major over ``dcn``), MaxText's layout."""
  devices = _devices(num_slices, per_slice)
  mesh = sharding.make_mesh(ici, devices=devices, dcn_shape=dict(dcn))
  shape = tuple(mesh.shape[a] for a in sharding.MESH_AXES)
  dcn_sizes = [(num_slices if dcn.get(a) == -1 else dcn.get(a, 1)) for a in sharding.MESH_AXES]
  ici_sizes = [s // d for s, d in zip(shape, dcn_sizes)]
  assert np.prod(shape) == len(devices) and np.prod(ici_sizes) == per_slice
  for idx in itertools.product(*map(range, shape)):
    want = np.ravel_multi_index(tuple(i // n for i, n in zip(idx, ici_sizes)), dcn_sizes)
    assert mesh.devices[idx].slice_index == want, (idx, mesh.devices[idx])
  assert sorted(d.id for d in mesh.devices.flat) == list(range(len(devices)))


def test_mesh_errors_name_the_fix():
  with pytest.raises(ValueError, match="multiplies to 4 slices; the 8 devices span 2"):
    sharding.make_mesh({"data": -1}, devices=_devices(2, 4), dcn_shape={"data": 4})
  with pytest.raises(ValueError, match=r"dcn_mesh is all 1\. Multislice: set "
                     r"--config.dcn_mesh.data=2"):
    sharding.make_mesh({"data": -1}, devices=_devices(2, 4, "tpu"), dcn_shape={"data": 1})
  # One slice (or devices without slice_index): the plain mesh, dcn all 1 as configured.
  mesh = sharding.make_mesh({"data": -1}, devices=_devices(1, 4), dcn_shape={"data": 1})
  assert mesh.shape["data"] == 4


def test_train_step_compiles_for_two_slices_like_one_slice_of_twice_the_size():
  """The smoke step on 2 x v5p-8 (dcn data=2, fsdp=4 per slice) has the per-device state
  and batch of the same mesh on one 8-chip slice (v5p-16): only the links differ."""
  devs = aot.topology_devices(aot.parse_topology("v5p-8", 2))
  assert sorted({d.slice_index for d in devs}) == [0, 1] and len(devs) == 8
  c = smoke.get_config()
  c.mesh.data, c.mesh.fsdp = 1, 4
  c.dcn_mesh.data = 2
  two, compiled = aot.compile_train_step(c, "v5p-8", num_slices=2)
  c1 = smoke.get_config()
  c1.mesh.data, c1.mesh.fsdp = 2, 4
  one, _ = aot.compile_train_step(c1, "v5p-16")
  assert two.mesh == one.mesh == {"data": 2, "fsdp": 4, "tensor": 1, "context": 1}
  assert two.topology == "v5p-8 x2 slices" and two.num_devices == 8 and two.fits
  assert (two.argument_bytes, two.output_bytes, two.alias_bytes) == (
      one.argument_bytes, one.output_bytes, one.alias_bytes)
  assert 0.5 < two.temp_bytes / one.temp_bytes < 2.0
  del compiled


@pytest.mark.slow
def test_released_size_compiles_on_two_slices():
  """NEO-ov 9B stage 3 (36K tokens) on 2 x v5p-256, data parallel across the slices
  (BUILD_NOTES §5 "Launchers and multislice" has the figures; ~minutes on 2 cores)."""
  from neo_jax.configs import neo_ov_9b  # pylint: disable=g-import-not-at-top
  c = neo_ov_9b.get_config("stage3")
  c.dcn_mesh.data = 2
  c.mesh.fsdp, c.mesh.tensor, c.mesh.context = 16, 4, 2
  c.train.grad_accum_steps = 4
  c.model.remat_policy = "full"
  report, _ = aot.compile_train_step(c, "v5p-256", num_slices=2)
  assert report.num_devices == 256 and report.mesh == {"data": 2, "fsdp": 16, "tensor": 4,
                                                       "context": 2}
  assert report.fits, report.text()
