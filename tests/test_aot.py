"""AOT compile of the real train step for a TPU topology, on the CPU (neo_jax.aot)."""

import os
import subprocess
import sys

import pytest

from neo_jax.configs import smoke
from neo_jax import aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_topology_names():
  t = aot.parse_topology("v5p-256")
  assert (t.topology_name, t.num_devices, t.chip.hbm_gib) == ("v5:4x4x8", 128, 95.0)
  t = aot.parse_topology("v6e-256")
  assert (t.topology_name, t.num_devices, t.chip.peak_tflops) == ("v6e:16x16", 256, 918.0)
  assert aot.parse_topology("v5p-64").num_devices == 32
  assert aot.parse_topology("v5e-16").topology_name == "v5e:4x4"
  assert aot.parse_topology("v5p:2x2x2", num_slices=2).num_devices == 16
  with pytest.raises(ValueError, match="No standard"):
    aot.parse_topology("v5p-24")
  with pytest.raises(ValueError, match="CUDA PJRT plugin"):
    aot.parse_topology("a3-2x8")


def test_tiny_config_compiles_for_v5p_8():
  """The smoke model, data=2 x fsdp=2 on the 4 chips of a v5p-8, compiled by libtpu."""
  c = smoke.get_config()
  c.mesh.data, c.mesh.fsdp = 2, 2
  report, compiled = aot.compile_train_step(c, "v5p-8")
  assert report.num_devices == 4 and report.mesh["fsdp"] == 2
  assert report.fits and 0 < report.total_bytes < 2 ** 30
  assert report.temp_bytes > 0 and report.flops_per_device > 0
  text = report.text()
  assert "per-device memory" in text and "step time" in text


def test_context_parallel_kernel_compiles_for_v5p_8():
  """data=2 x context=2 with the Pallas kernel: Mosaic kernels under shard_map, each on
  its half of the sequence against all-gathered keys / values."""
  c = smoke.get_config("seq_len=256")
  c.mesh.data, c.mesh.context = 2, 2
  c.model.attention_impl = "pallas"
  c.model.attention_block_q = c.model.attention_block_kv = 128
  report, compiled = aot.compile_train_step(c, "v5p-8")
  assert report.mesh["context"] == 2 and report.fits
  text = compiled.as_text()
  for name in ("flash_mixed_fwd", "flash_mixed_dq", "flash_mixed_dkv", "all-gather",
               "reduce-scatter"):
    assert name in text, name


def test_cli_fails_clearly_when_it_does_not_fit():
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "neo_jax.aot", "--config=smoke",
                      "--topology=v5p-8", "--hbm_gib=0.001"], env=env, cwd=ROOT,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
  assert "DOES NOT FIT" in r.stderr and "total" in r.stdout


@pytest.mark.slow  # over a minute on 2 cores: `bash scripts/test.sh -m slow`
def test_cli_compiles_every_context_phase():
  """With a context schedule the CLI compiles one step per phase length (each must fit)."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "neo_jax.aot", "--config=smoke",
                      "--topology=v5p-8", "--config.seq_len=128",
                      "--config.seq_len_schedule=((0, 64), (10, 128))"], env=env, cwd=ROOT,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
  assert "Context schedule: 64 tokens from step 0, 128 tokens from step 10" in r.stdout
  assert "64-token rows" in r.stdout and r.stdout.count("per-device memory") == 2
