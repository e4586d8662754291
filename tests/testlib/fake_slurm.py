"""``sbatch`` / ``srun`` stand-ins: a SLURM job's tasks as local processes on loopback.

``install(bin_dir)`` writes ``sbatch`` and ``srun`` shims running this file.

* ``sbatch [OPTIONS] SCRIPT ARGS``: reads the script's ``#SBATCH`` lines (command-line
  options win), sets the job's variables (``SLURM_JOB_ID`` = ``$FAKE_SLURM_JOB_ID``,
  ``SLURM_NNODES``, ``SLURM_NTASKS_PER_NODE``, ``SLURM_GPUS_ON_NODE`` = the job's
  ``--gpus-per-node``, ``SLURM_JOB_NODELIST``, ``SLURM_SUBMIT_DIR``), runs ``bash SCRIPT
  ARGS`` with its output in ``--output`` (``%j`` = job id), prints ``Submitted batch job
  <id>``. Unlike SLURM it waits for the script and exits with its status.
* ``srun [OPTIONS] CMD``: starts nodes x tasks-per-node processes of CMD with the
  variables srun gives a task (``SLURM_STEP_NODELIST``, ``SLURM_NTASKS``, ``SLURM_PROCID``,
  ``SLURM_LOCALID``, ``SLURM_NODEID``, ...) and ``CUDA_VISIBLE_DEVICES`` as SLURM's GPU
  binding sets it: ``--gpus-per-task=k`` -> the task's own k GPUs only;
  ``--gpu-bind=none`` or no per-task GPUs -> all GPUs of the step on the node
  (``--gpus-per-node``, default the job's). ``--kill-on-bad-exit=1`` ends the other tasks
  when one fails. Each task's SLURM variables are written to
  ``$FAKE_SLURM_LOG/task<i>.json`` for the test.

Every node is this machine (``127.0.0.1``): JAX's SLURM detection makes the first node of
``SLURM_STEP_NODELIST`` the coordinator. An unknown option is an error (status 2).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import stat
import subprocess
import sys
import time

SELF = os.path.abspath(__file__)
NODE = "127.0.0.1"


def install(bin_dir: str) -> None:
  os.makedirs(bin_dir, exist_ok=True)
  for name in ("sbatch", "srun"):
    path = os.path.join(bin_dir, name)
    with open(path, "w") as f:
      f.write(f'#!/bin/sh\nexec "{sys.executable}" "{SELF}" {name} "$@"\n')
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


def sbatch_parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="sbatch")
  for flag in ("--job-name", "--output", "--signal"):
    ap.add_argument(flag)
  for flag in ("--nodes", "--ntasks-per-node", "--gpus-per-node", "--cpus-per-task"):
    ap.add_argument(flag, type=int)
  ap.add_argument("--exclusive", action="store_true")
  return ap


def sbatch(argv: list[str]) -> int:
  i = next(k for k, x in enumerate(argv) if not x.startswith("-"))
  script, script_args = argv[i], argv[i + 1:]
  header = []
  with open(script) as f:
    for line in f:
      if line.startswith("#SBATCH"):
        header += shlex.split(line[len("#SBATCH"):])
      elif line.strip() and not line.startswith("#"):
        break
  a = sbatch_parser().parse_args(header + argv[:i])
  job = os.environ.get("FAKE_SLURM_JOB_ID", "4242")
  env = dict(os.environ, SLURM_JOB_ID=job, SLURM_JOBID=job, SLURM_NNODES=str(a.nodes or 1),
             SLURM_JOB_NUM_NODES=str(a.nodes or 1), SLURM_JOB_NODELIST=NODE,
             SLURM_SUBMIT_DIR=os.getcwd(), SLURM_NTASKS_PER_NODE=str(a.ntasks_per_node or 1),
             SLURM_GPUS_ON_NODE=str(a.gpus_per_node or 0), SLURM_JOB_NAME=a.job_name or "")
  out = (a.output or "slurm-%j.out").replace("%j", job)
  print(f"Submitted batch job {job}", flush=True)
  with open(out, "w") as f:
    return subprocess.call(["bash", script] + script_args, env=env, stdout=f,
                           stderr=subprocess.STDOUT)


def srun_parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="srun")
  for flag in ("--nodes", "--ntasks-per-node", "--gpus-per-node", "--gpus-per-task",
               "--kill-on-bad-exit"):
    ap.add_argument(flag, type=int)
  ap.add_argument("--gpu-bind", choices=("none", "closest", "single:1"))
  ap.add_argument("cmd", nargs=argparse.REMAINDER)
  return ap


def task_envs(a, job_gpus: int) -> list[dict]:
  """The SLURM variables and ``CUDA_VISIBLE_DEVICES`` of every task of the step.

  Raises:
    SystemExit: the step asks for more GPUs than a node of the job has.
  """
  nodes, per_node = a.nodes or 1, a.ntasks_per_node or 1
  step_gpus = a.gpus_per_node if a.gpus_per_node is not None else job_gpus
  if step_gpus > job_gpus or (a.gpus_per_task or 0) * per_node > job_gpus:
    raise SystemExit(f"srun: error: the step asks for more GPUs than the {job_gpus} per node")
  out = []
  for i in range(nodes * per_node):
    local = i % per_node
    if a.gpus_per_task and a.gpu_bind != "none":
      visible = range(local * a.gpus_per_task, (local + 1) * a.gpus_per_task)
    else:
      visible = range(step_gpus)
    out.append({"SLURM_JOB_ID": os.environ["SLURM_JOB_ID"], "SLURM_STEP_ID": "0",
                "SLURM_STEP_NODELIST": ",".join([NODE] * nodes) if nodes > 1 else NODE,
                "SLURM_STEP_NUM_NODES": str(nodes), "SLURM_NTASKS": str(nodes * per_node),
                "SLURM_STEP_NUM_TASKS": str(nodes * per_node), "SLURM_PROCID": str(i),
                "SLURM_LOCALID": str(local), "SLURM_NODEID": str(i // per_node),
                "CUDA_VISIBLE_DEVICES": ",".join(map(str, visible))})
  return out


def srun(argv: list[str]) -> int:
  a = srun_parser().parse_args(argv)
  if not a.cmd:
    raise SystemExit("srun: error: no command")
  envs = task_envs(a, int(os.environ.get("SLURM_GPUS_ON_NODE", "0")))
  log_dir = os.environ.get("FAKE_SLURM_LOG")
  procs = []
  for i, e in enumerate(envs):
    if log_dir:
      with open(os.path.join(log_dir, f"task{i}.json"), "w") as f:
        json.dump(e, f)
    procs.append(subprocess.Popen(a.cmd, env=dict(os.environ, **e)))
  rcs = [None] * len(procs)
  while any(r is None for r in rcs):
    for k, p in enumerate(procs):
      if rcs[k] is None:
        rcs[k] = p.poll()
    if a.kill_on_bad_exit and any(r for r in rcs if r is not None):
      for p in procs:
        if p.poll() is None:
          p.kill()
      rcs = [p.wait() for p in procs]
      break
    time.sleep(0.2)
  return max(abs(r) for r in rcs)


if __name__ == "__main__":
  sys.exit({"sbatch": sbatch, "srun": srun}[sys.argv[1]](sys.argv[2:]))
