"""Launchers in dry-run mode: the commands they would run."""

import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)


def _run(argv, env=None):
  r = subprocess.run(argv, cwd=ROOT, env=env or ENV, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  return r.stdout.strip().splitlines()


def test_local_dry_run():
  lines = _run([sys.executable, "launch/local.py", "--num_processes=3", "--devices_per_process=2",
                "--port=1234", "--dry_run", "--", "python", "-m", "neo_jax.train", "--workdir=/w"])
  assert len(lines) == 3
  for i, line in enumerate(lines):
    assert line.startswith("JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2 ")
    assert line.endswith(f"python -m neo_jax.train --workdir=/w --coordinator_address=127.0.0.1:1234 "
                         f"--num_processes=3 --process_id={i}")


def test_tpu_pod_dry_run():
  lines = _run([sys.executable, "launch/tpu_pod.py", "--tpu=pod", "--zone=us-east5-a",
                "--project=p", "--workdir=gs://b/r", "--setup", "--dry_run", "--",
                "--config", "configs/neo_ov_9b.py:stage3", "--config.mesh.tensor=4"])
  assert len(lines) == 3
  scp, install, train = (shlex.split(l) for l in lines)
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
  assert train[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"]
  assert "--worker=all" in train and "--zone=us-east5-a" in train and "--project=p" in train
  cmd = [a for a in train if a.startswith("--command=")][0][len("--command="):]
  assert cmd == ("cd ~/neo_jax && python3 -m neo_jax.train --distributed --workdir=gs://b/r "
                 "--config configs/neo_ov_9b.py:stage3 --config.mesh.tensor=4")
  assert "pip install" in install[-1]


def test_xpk_and_jobset_dry_run(tmp_path):
  common = ["--workload=neo9", "--tpu_type=v5p-256", "--num_slices=2", "--image=img:1",
            "--workdir=gs://b/r", "--dry_run"]
  lines = _run([sys.executable, "launch/xpk.py", "--cluster=c"] + common +
               ["--", "--config", "configs/neo_ov_9b.py:stage3"])
  xpk = shlex.split(lines[-1])
  assert xpk[:3] == ["xpk", "workload", "create"]
  assert {"--cluster=c", "--workload=neo9", "--tpu-type=v5p-256", "--num-slices=2",
          "--docker-image=img:1"} <= set(xpk)
  assert ("--command=python3 -m neo_jax.train --distributed --workdir=gs://b/r "
          "--config configs/neo_ov_9b.py:stage3") in xpk
  manifest = str(tmp_path / "js.yaml")
  lines = _run([sys.executable, "launch/xpk.py", f"--manifest={manifest}"] + common)
  text = "\n".join(lines)
  assert "kind: JobSet" in text and "replicas: 2" in text and "parallelism: 32" in text
  assert "gke-tpu-topology: 4x4x8" in text and "google.com/tpu: 4" in text
  assert lines[-1] == f"kubectl apply -f {manifest}"
  assert not os.path.exists(manifest)  # dry run writes nothing


def test_slurm_dry_run():
  env = dict(ENV, DRY_RUN="1", SLURM_NNODES="4", GPUS_PER_NODE="8", SLURM_SUBMIT_DIR=ROOT)
  lines = _run(["bash", "launch/slurm.sbatch", "--workdir=/w", "--config", "configs/smoke.py"], env)
  assert shlex.split(lines[-1]) == [
      "srun", "--nodes=4", "--ntasks-per-node=8", "--gpus-per-task=1", "--kill-on-bad-exit=1",
      "python3", "-m", "neo_jax.train", "--distributed", "--workdir=/w", "--config",
      "configs/smoke.py"]


def test_sweep_lists_commands():
  lines = _run([sys.executable, "-m", "neo_jax.sweep", "--config=configs/neo_ov_2b.py:stage2",
                "--workdir=/runs"])
  assert len(lines) == 6
  first = shlex.split(lines[0])
  assert first[1:] == ["-m", "neo_jax.train", "--config=configs/neo_ov_2b.py:stage2",
                       "--workdir=/runs/00_lr=2e-05,num_prebuffer_layers=6",
                       "--config.train.lr=2e-05", "--config.model.num_prebuffer_layers=6"]
