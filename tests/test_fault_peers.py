"""Issue 26, items 4, 6 and 7 with two real processes (gloo over loopback).

* A dead peer (``kill -9``): the survivor leaves within ``train.peer_timeout_s`` (30 s)
  with one line naming the dead process and the last committed checkpoint, status 75;
  when the dead one is process 0 (the coordination service's host), JAX ends the
  survivor at once (status -6, its own fatal line) (slow).
* Preemption while a checkpoint upload stalls in the object store, and during
  evaluation: both processes save the same step once and exit 0 (slow).
* Preemption while a peer is stuck (SIGSTOP): no step can be agreed; the grace watchdog
  ends the run with one line and status 75 (slow).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time

import pytest

from neo_jax.core import paths
from testlib.faulty_proxy import Fault
from testlib.procs import Launch


def _cmd(workdir, steps=200, every=5, *extra):
  return [sys.executable, "-m", "neo_jax.train", f"--config=smoke:steps={steps}",
          f"--workdir={workdir}", f"--config.checkpoint.every_steps={every}", *extra]


def test_dead_peer_ends_the_survivor_with_one_line_and_status_75(tmp_path):
  w = str(tmp_path / "run")
  run = Launch(_cmd(w))
  run.wait_for(0, "[train] step 7 ")
  t_kill = time.monotonic()
  run.procs[1].kill()
  codes = run.wait(timeout=120)
  took = time.monotonic() - t_kill
  out = run.text(0)
  assert codes[0] == 75, out[-3000:]
  assert took < 30, took
  line = [l for l in out.splitlines() if l.startswith("Process 1 is gone")]
  assert len(line) == 1, out[-3000:]
  assert "the last committed checkpoint is step 5; restart to resume" in line[0], line
  assert "Traceback" not in out and "Check failure stack trace" not in out, out[-3000:]


@pytest.mark.slow
def test_dead_coordinator_ends_the_survivor_at_once(tmp_path):
  run = Launch(_cmd(str(tmp_path / "run")))
  run.wait_for(0, "[train] step 3 ")
  t_kill = time.monotonic()
  run.procs[0].kill()
  codes = run.wait(timeout=120)
  assert codes[1] == -signal.SIGABRT, run.text(1)[-3000:]
  assert time.monotonic() - t_kill < 30
  assert "Terminating process because the JAX distributed service detected fatal errors" in \
      run.text(1)


def _saved_steps(launch):
  out = []
  for i in range(2):
    lines = [l for l in launch.text(i).splitlines()
             if "Preemption notice: saved checkpoint at step" in l]
    assert len(lines) == 1, launch.text(i)[-3000:]
    out.append(int(lines[0].split("at step")[1].split()[0]))
  return out


@pytest.mark.slow
def test_fault_preemption_while_a_checkpoint_upload_stalls(faulty_gcs):
  bucket = faulty_gcs.emulator.create_bucket("preempt-save")
  stall = Fault("stall", path=r"uploadType=media&name=run/checkpoints/5/state/", stall_s=8,
                times=1)
  faulty_gcs.add(stall)
  run = Launch(_cmd(f"{bucket}/run", 200, 5))
  deadline = time.monotonic() + 400
  while not stall.hits and time.monotonic() < deadline:
    assert all(p.poll() is None for p in run.procs), run.text(0)[-3000:]
    time.sleep(0.05)
  run.procs[1].send_signal(signal.SIGTERM)           # while step 5's upload hangs
  codes = run.wait(timeout=300)
  assert codes == [0, 0], (run.text(0)[-3000:], run.text(1)[-3000:])
  saved = _saved_steps(run)
  assert saved[0] == saved[1] > 5, saved
  committed = sorted({int(m.group(1)) for n in faulty_gcs.emulator.list_objects(
      "preempt-save", "run/checkpoints/") if (m := re.fullmatch(
          r"run/checkpoints/(\d+)/commit_success\.txt", n))})
  assert committed == [5, saved[0]], committed


@pytest.mark.slow
def test_fault_preemption_during_evaluation(tmp_path):
  w = str(tmp_path / "eval")
  cmd = [sys.executable, "-m", "neo_jax.train",
         "--config=demo:steps=6,eval_every=2,seq_len=256,batch_size=4",
         f"--workdir={w}", "--config.eval.limit_per_task=4", "--config.eval.batch_size=1",
         "--config.model.num_llm_layers=1", "--config.log_every=1",
         "--config.checkpoint.every_steps=100"]
  run = Launch(cmd)
  run.wait_for(0, "[train] step 2 ")                 # the evaluation of step 2 starts now
  run.procs[1].send_signal(signal.SIGTERM)
  codes = run.wait(timeout=400)
  assert codes == [0, 0], (run.text(0)[-3000:], run.text(1)[-3000:])
  saved = _saved_steps(run)
  assert saved == [2, 2], saved
  assert sorted(os.listdir(os.path.join(w, "checkpoints"))) == ["2"]
  rows = [json.loads(l) for l in open(os.path.join(w, "metrics.jsonl"))]
  assert not [r for r in rows if r["kind"] == "eval"], "the interrupted evaluation was logged"
  assert not os.path.exists(os.path.join(w, "eval", "predictions_2.jsonl"))


@pytest.mark.slow
def test_fault_preemption_with_a_stuck_peer_ends_within_the_grace_period(tmp_path):
  w = str(tmp_path / "run")
  run = Launch(_cmd(w, 200, 5, "--config.train.signal_grace_s=3"))
  run.wait_for(0, "[train] step 7 ")
  run.procs[1].send_signal(signal.SIGSTOP)
  time.sleep(1.0)
  t0 = time.monotonic()
  run.procs[0].send_signal(signal.SIGTERM)
  try:
    run.procs[0].wait(timeout=60)
  finally:
    run.procs[1].send_signal(signal.SIGKILL)
  took = time.monotonic() - t0
  run.wait(timeout=30)
  out = run.text(0)
  assert run.procs[0].returncode == 75, out[-3000:]
  assert took < 15, took
  assert "Preemption notice 3 s ago and the run has not finished" in out, out[-3000:]
  assert "The last committed checkpoint is step 5." in out
  assert paths.exists(os.path.join(w, "checkpoints", "5"))
