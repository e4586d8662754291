"""``launch/slurm.sbatch`` under ``sbatch`` / ``srun`` stand-ins (``testlib/fake_slurm.py``).

The stand-ins give the script and its tasks the variables SLURM sets (one node = this
machine, 2 GPUs, 2 tasks); JAX's real SLURM detection (``jax._src.clusters.SlurmCluster``)
then joins the two tasks through ``jax.distributed`` (gloo on loopback, 2 CPU devices
each) and they train the ``smoke`` config together. Stood in: the scheduler and the GPUs
(``CUDA_VISIBLE_DEVICES`` as SLURM's binding would set it; JAX runs on the CPU).
"""

import json
import os
import shlex
import socket
import stat
import subprocess
import sys

from jax._src import clusters

from testlib import fake_slurm
from testlib import train as train_testlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _slurm_job_id_with_free_port() -> int:
  """A job id whose coordinator port (JAX: id % 4096 + 61440) is free now."""
  for job in range(1000 + os.getpid() % 3000, 4096 * 10):
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", job % 4096 + 61440))
        return job
      except OSError:
        continue
  raise RuntimeError("no free port in 61440..65535")


def _jax_detection(task_env: dict, monkeypatch):
  """What ``jax.distributed.initialize()`` derives in a task: (coordinator, process count,
  process id, local device ids)."""
  with monkeypatch.context() as m:
    for k in list(os.environ):
      if k.startswith(("SLURM_", "OMPI_", "KUBERNETES_", "TPU_WORKER", "JAX_COORDINATOR")):
        m.delenv(k)
    for k, v in task_env.items():
      m.setenv(k, v)
    return clusters.ClusterEnv.auto_detect_unset_distributed_params(None, None, None, None, None, 10)


def _sees_its_device(task_env: dict, local_device_ids) -> bool:
  """JAX's local device ids index the GPUs the task can see (CUDA renumbers the visible ones)."""
  visible = [x for x in task_env["CUDA_VISIBLE_DEVICES"].split(",") if x]
  return all(0 <= i < len(visible) for i in local_device_ids)


def test_sbatch_two_tasks_train_together_each_sees_its_gpu(tmp_path, monkeypatch):
  bin_dir = tmp_path / "bin"
  fake_slurm.install(str(bin_dir))
  python3 = bin_dir / "python3"  # the cluster's python3: this environment's interpreter
  python3.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
  python3.chmod(python3.stat().st_mode | stat.S_IEXEC)
  job = _slurm_job_id_with_free_port()
  workdir = str(tmp_path / "workdir")
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  env.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=ROOT,
             FAKE_SLURM_JOB_ID=str(job), FAKE_SLURM_LOG=str(tmp_path), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2", NEO_JAX_LOOPBACK_ONLY="1")
  r = subprocess.run(["sbatch", "--nodes=1", "--gpus-per-node=2", "--ntasks-per-node=2",
                      f"{ROOT}/launch/slurm.sbatch", f"--workdir={workdir}",
                      "--config=smoke:steps=4",
                      "--config.checkpoint.every_steps=2"],
                     env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
  out = (tmp_path / f"neo_jax_{job}.log").read_text()
  assert r.returncode == 0, r.stdout + r.stderr + out[-4000:]
  assert r.stdout.strip() == f"Submitted batch job {job}"

  # Two tasks, one per GPU of the node, with the variables JAX's detection reads.
  tasks = [json.loads((tmp_path / f"task{i}.json").read_text()) for i in range(2)]
  for i, t in enumerate(tasks):
    coord, n, pid, local = _jax_detection(t, monkeypatch)
    assert (coord, n, pid, local) == (f"127.0.0.1:{job % 4096 + 61440}", 2, i, [i])
    assert t["CUDA_VISIBLE_DEVICES"] == "0,1" and _sees_its_device(t, local)
  # They trained together: process 0 logged the 4 global steps, both saved step 4.
  assert sorted(train_testlib.logged_losses(workdir)) == [1, 2, 3, 4]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]


def test_per_task_gpu_binding_is_what_the_script_avoids(monkeypatch):
  """The check above fails for the old ``srun --gpus-per-task=1`` line: each task then sees
  one GPU, while JAX asks task 1 for local device 1."""
  monkeypatch.setenv("SLURM_JOB_ID", "7")
  old = fake_slurm.srun_parser().parse_args(shlex.split(
      "--nodes=1 --ntasks-per-node=2 --gpus-per-task=1 --kill-on-bad-exit=1 python3 x"))
  tasks = fake_slurm.task_envs(old, job_gpus=2)
  assert [t["CUDA_VISIBLE_DEVICES"] for t in tasks] == ["0", "1"]
  detected = [_jax_detection(t, monkeypatch)[3] for t in tasks]
  assert detected == [[0], [1]]
  assert [_sees_its_device(t, d) for t, d in zip(tasks, detected)] == [True, False]
