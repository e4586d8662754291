"""What a pod run needs beyond one host: a preemption notice on one process makes every
process save the same step and exit 0 (and the run resumes exactly from it); evaluation
with parameters sharded across processes equals the single-process one; a profile
window and the goodput breakdown."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from neo_jax.configs import smoke
from neo_jax.launch import local
from neo_jax.train import trainer
from testlib.train import logged_losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start(cmd, num_processes=2, devices=2):
  """The processes of ``launch/local.py`` started here (so each pid is known), with a
  reader thread per process collecting its output lines."""
  port = local.free_port()
  procs, logs = [], []
  for env, argv in local.process_commands(cmd, num_processes, devices, port):
    p = subprocess.Popen(argv, env={**os.environ, **env, "PYTHONPATH": ROOT}, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    threading.Thread(target=lambda p=p, lines=lines: lines.extend(iter(p.stdout.readline, "")),
                     daemon=True).start()
    procs.append(p)
    logs.append(lines)
  return procs, logs


def _wait(procs, timeout=600):
  deadline = time.time() + timeout
  for p in procs:
    p.wait(timeout=max(deadline - time.time(), 1))
  return [p.returncode for p in procs]


def _train_cmd(workdir, steps, extra=()):
  return [sys.executable, "-m", "neo_jax.train", f"--config=smoke:steps={steps}",
          f"--workdir={workdir}", "--config.checkpoint.every_steps=100", *extra]


@pytest.mark.slow  # 2.5 min; default: test_fault_eval (SIGTERM on one process, both save one step), test_cloud_storage (bit-exact resume)
def test_sigterm_on_one_process_saves_one_step_everywhere_and_resumes(tmp_path):
  steps = 30
  full, pre = str(tmp_path / "full"), str(tmp_path / "pre")
  assert local.run(_train_cmd(full, steps), 2, 2, timeout=600) == 0
  procs, logs = _start(_train_cmd(pre, steps))
  deadline = time.time() + 300
  while not any("[train] step 5 " in l for l in logs[0]) and time.time() < deadline:
    assert all(p.poll() is None for p in procs), "".join(logs[0][-20:] + logs[1][-20:])
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)           # process 1 only
  codes = _wait(procs)
  out = ["".join(l) for l in logs]
  assert codes == [0, 0], out
  saved = []
  for text in out:
    line = [l for l in text.splitlines() if "Preemption notice: saved checkpoint at step" in l]
    assert line, text[-2000:]
    saved.append(int(line[0].split("at step")[1].split()[0]))
  assert saved[0] == saved[1] < steps
  assert sorted(int(d) for d in os.listdir(os.path.join(pre, "checkpoints"))) == [saved[0]]
  assert local.run(_train_cmd(pre, steps), 2, 2, timeout=600) == 0
  ref, got = logged_losses(full), logged_losses(pre)
  for step in range(saved[0] + 1, steps + 1):
    assert got[step] == ref[step], (step, got[step], ref[step])


def _eval_cmd(workdir):
  return [sys.executable, "-m", "neo_jax.train",
          "--config=demo:steps=2,eval_every=2,seq_len=256,batch_size=4",
          f"--workdir={workdir}", "--config.train.lr=0.0", "--config.eval.limit_per_task=3",
          "--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.model.num_llm_layers=1",
          "--config.log_every=1"]


@pytest.mark.slow  # over a minute on 2 cores: `bash scripts/test.sh -m slow`
def test_eval_with_parameters_sharded_across_processes_equals_one_process(tmp_path):
  """lr 0 keeps the initial parameters, so both runs evaluate the same model: FSDP over
  4 devices in 2 processes (no process holds every parameter) vs 4 devices in one."""
  multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
  assert local.run(_eval_cmd(multi), 2, 2, timeout=600) == 0
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  subprocess.run(_eval_cmd(single), env=env, cwd=ROOT, check=True, capture_output=True)
  read = lambda w: [json.loads(l) for l in open(os.path.join(w, "eval", "predictions_2.jsonl"))]
  assert read(multi) == read(single)
  assert len(read(multi)) == 6 * 3
  evals = lambda w: [r for r in map(json.loads, open(os.path.join(w, "metrics.jsonl")))
                     if r["kind"] == "eval"]
  em, es = evals(multi)[-1], evals(single)[-1]
  assert {k: v for k, v in em.items() if k.startswith("acc")} == {
      k: v for k, v in es.items() if k.startswith("acc")}


@pytest.mark.slow  # about a minute on 2 cores: `bash scripts/test.sh -m slow`
def test_profile_window_and_goodput(tmp_path):
  c = smoke.get_config("steps=6")
  c.profile.start_step, c.profile.num_steps = 3, 2
  workdir = str(tmp_path / "prof")
  trainer.run(c, workdir)
  traces = glob.glob(os.path.join(workdir, "profile", "**", "*.xplane.pb"), recursive=True)
  assert traces and all(os.path.getsize(t) > 0 for t in traces), traces
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train = [r for r in rows if r["kind"] == "train"]
  for r in train:
    assert 0 < r["goodput"] <= 1
    parts = r["time/step_s"] + r["time/data_s"] + r["time/checkpoint_s"] + r["time/eval_s"]
    assert abs(parts - r["time/step_s"] / r["goodput"]) < 1e-6 * max(parts, 1)
  assert any(r["time/checkpoint_s"] > 0 for r in train)   # step 5's save is in step 6's row
