"""Launchers in dry-run mode (the commands they would run), the pod requirements, the image.

The launchers run for real against stand-ins in ``test_launch_tpu_pod.py`` (gcloud),
``test_launch_slurm.py`` (sbatch / srun) and ``test_launch_xpk.py`` (xpk's parser, the
Kubernetes schemas)."""

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib

from testlib import fake_docker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)
sys.path.insert(0, os.path.join(ROOT, "launch"))
import pod_requirements  # noqa: E402  pylint: disable=g-import-not-at-top


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


def test_tpu_pod_dry_run_ships_code_and_starts_detached():
  lines = _run([sys.executable, "launch/tpu_pod.py", "--tpu=pod", "--zone=us-east5-a",
                "--project=p", "--workdir=gs://b/r", "--setup", "--dry_run", "--",
                "--config", "configs/neo_ov_9b.py:stage3", "--config.mesh.tensor=4"])
  scp, setup, start = (shlex.split(l) for l in lines)
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert scp[5].endswith("/neo_jax.tar.gz") and scp[6] == "pod:~/neo_jax.tar.gz"
  for cmd in (scp, setup, start):
    assert {"--worker=all", "--zone=us-east5-a", "--project=p"} <= set(cmd)
  remote = [a for a in setup if a.startswith("--command=")][0][len("--command="):]
  # Unpacked into the named folder (not ~); the files of the previous --setup removed first.
  assert remote.startswith("mkdir -p ~/neo_jax && cd ~/neo_jax && { [ ! -f .shipped_files ] || "
                           "xargs -d '\\n' rm -f < .shipped_files || true; } && "
                           "tar -xzf ~/neo_jax.tar.gz && tar -tzf ~/neo_jax.tar.gz > .shipped_files")
  assert remote.endswith("cd ~/neo_jax && python3 launch/pod_worker.py setup")
  remote = [a for a in start if a.startswith("--command=")][0][len("--command="):]
  assert shlex.split(remote) == [
      "cd", "~/neo_jax", "&&", "python3", "launch/pod_worker.py", "start", "--job=train",
      "--workdir=gs://b/r", "--log_sync_s=60.0", "--", "--config", "configs/neo_ov_9b.py:stage3",
      "--config.mesh.tensor=4"]


def test_tpu_pod_dry_run_multislice_and_job_control():
  lines = _run([sys.executable, "launch/tpu_pod.py", "--tpu=s0", "--tpu=s1", "--zone=z",
                "--workdir=/w", "--dry_run", "--env=LIBTPU_INIT_ARGS=--xla_foo=1", "--",
                "--config.dcn_mesh.data=2"])
  describe, start0, start1 = (shlex.split(l) for l in lines)
  assert describe[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "s0"]
  assert "--format=value(networkEndpoints[0].ipAddress)" in describe
  for i, cmd in enumerate((start0, start1)):
    assert cmd[5] == f"s{i}"
    remote = cmd[-1]
    assert (f"--env=MEGASCALE_COORDINATOR_ADDRESS=COORDINATOR_IP --env=MEGASCALE_NUM_SLICES=2 "
            f"--env=MEGASCALE_SLICE_ID={i} --env=MEGASCALE_PORT=8080 "
            f"--env=LIBTPU_INIT_ARGS=--xla_foo=1 --") in remote
  for flag, action in (("--status", "status --job=train"), ("--stop", "stop --job=train --timeout=300.0"),
                       ("--logs", "logs --job=train --lines=50")):
    lines = _run([sys.executable, "launch/tpu_pod.py", "--tpu=s0", "--tpu=s1", "--zone=z", flag,
                  "--dry_run"])
    assert len(lines) == 2 and all(l.endswith(f"launch/pod_worker.py {action}'") for l in lines)


def test_xpk_dry_run_passes_every_flag():
  lines = _run([sys.executable, "launch/xpk.py", "--cluster=c", "--zone=us-east5-a",
                "--workload=neo9", "--tpu_type=v5e-256", "--num_slices=2", "--image=img:1",
                "--workdir=gs://b/r", "--dry_run", "--", "--config", "configs/neo_ov_9b.py:stage3"])
  xpk = shlex.split(lines[-1])
  assert xpk[:3] == ["xpk", "workload", "create"]
  assert {"--cluster=c", "--workload=neo9", "--tpu-type=v5litepod-256", "--num-slices=2",
          "--docker-image=img:1", "--zone=us-east5-a", "--max-restarts=3",
          "--termination-grace-period-seconds=300"} <= set(xpk)
  assert ("--command=python3 -m neo_jax.train --distributed --workdir=gs://b/r "
          "--config configs/neo_ov_9b.py:stage3") in xpk


def test_jobset_dry_run(tmp_path):
  manifest = str(tmp_path / "js.yaml")
  lines = _run([sys.executable, "launch/xpk.py", f"--manifest={manifest}", "--zone=z",
                "--workload=neo9", "--tpu_type=v5p-256", "--num_slices=2", "--image=img:1",
                "--workdir=gs://b/r", "--dry_run"])
  text = "\n".join(lines)
  assert "kind: JobSet" in text and "replicas: 2" in text and "parallelism: 32" in text
  assert "gke-tpu-topology: 4x4x8" in text and "google.com/tpu: 4" in text
  assert lines[-1] == f"kubectl apply -f {manifest}"
  assert not os.path.exists(manifest)  # dry run writes nothing


def test_slurm_dry_run():
  env = dict(ENV, DRY_RUN="1", SLURM_NNODES="4", GPUS_PER_NODE="8", SLURM_SUBMIT_DIR=ROOT)
  lines = _run(["bash", "launch/slurm.sbatch", "--workdir=/w", "--config", "configs/smoke.py"], env)
  assert shlex.split(lines[-1]) == [
      "srun", "--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8", "--gpu-bind=none",
      "--kill-on-bad-exit=1", "python3", "-m", "neo_jax.train", "--distributed", "--workdir=/w",
      "--config", "configs/smoke.py"]


def test_sweep_lists_commands():
  lines = _run([sys.executable, "-m", "neo_jax.sweep", "--config=configs/neo_ov_2b.py:stage2",
                "--workdir=/runs"])
  assert len(lines) == 6
  first = shlex.split(lines[0])
  assert first[1:] == ["-m", "neo_jax.train", "--config=configs/neo_ov_2b.py:stage2",
                       "--workdir=/runs/00_lr=2e-05,num_prebuffer_layers=6",
                       "--config.train.lr=2e-05", "--config.model.num_prebuffer_layers=6"]


def test_pod_requirements_are_the_lock_without_torch():
  with open(os.path.join(ROOT, "requirements-lock.txt")) as f:
    lock = [l.strip() for l in f if l.strip() and not l.startswith("#")]
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]
  out = subprocess.run([sys.executable, "launch/pod_requirements.py"], cwd=ROOT,
                       capture_output=True, text=True, check=True).stdout.splitlines()
  pins = [l for l in out if not l.startswith("#")]
  torch_names = {re.split(r"[=<>]", r)[0].lower() for r in extras["torch"]}
  assert torch_names == {"torch", "transformers"}
  # Every pin of the lock file but the torch extra's, unchanged; the tpu extra's pin kept.
  assert pins == [l for l in lock if re.split(r"==", l)[0].lower() not in torch_names]
  assert "libtpu==0.0.42.1" in pins and extras["tpu"] == ["libtpu==0.0.42.1"]
  assert not any(p.lower().startswith(("torch", "nvidia", "transformers")) for p in pins)
  # A tpu extra absent from the lock is added; names compare as PEP 503 names.
  text = pod_requirements.pod_requirements(
      "Jax==1\nTorch==2\n# c\n", '[project]\nname="x"\n[project.optional-dependencies]\n'
      'tpu = ["libtpu==3"]\ntorch = ["torch==2"]\n')
  assert text.splitlines()[1:] == ["Jax==1", "# c", "libtpu==3"]


def test_build_image_script_and_dockerfile(tmp_path):
  """launch/build_image.sh against a docker stand-in that checks the build context: every
  COPY source exists and is not excluded by .dockerignore, the base is Python >= 3.11."""
  bin_dir, log = str(tmp_path / "bin"), tmp_path / "docker.log"
  fake_docker.install(bin_dir)
  env = dict(ENV, PATH=bin_dir + os.pathsep + os.environ["PATH"], FAKE_DOCKER_LOG=str(log))
  lines = _run(["bash", "launch/build_image.sh", "us-docker.pkg.dev/p/r/", "v1"], env)
  assert lines[-1] == "us-docker.pkg.dev/p/r/neo_jax:v1"
  calls = [json.loads(l) for l in log.read_text().splitlines()]
  assert calls[0]["argv"] == ["build", "--platform=linux/amd64", "-f", "Dockerfile", "-t",
                              "us-docker.pkg.dev/p/r/neo_jax:v1", "."]
  assert calls[0]["cwd"] == ROOT and calls[0]["checked"]["base"] == "python:3.11-slim"
  assert "launch/pod_requirements.py" in calls[0]["checked"]["copied"]
  assert calls[1]["argv"] == ["push", "us-docker.pkg.dev/p/r/neo_jax:v1"]
  with open(os.path.join(ROOT, "Dockerfile")) as f:
    dockerfile = f.read()
  # The image installs the pod requirements (no torch) and the tpu extra, at xpk's /app.
  assert "pod_requirements.py" in dockerfile and "pip install -r /tmp/build/requirements-pod.txt" \
      in dockerfile and "'.[tpu]'" in dockerfile and "WORKDIR /app" in dockerfile
