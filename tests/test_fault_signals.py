"""Issue 26, item 7: a preemption notice is honoured wherever the trainer waits.

* The input pipeline stalls (its ``next`` never returns, inside Python): a SIGTERM makes
  the single-process trainer save the step it reached and return at once; the resumed
  run's losses equal an uninterrupted run's bit for bit (the saved data state is the one
  of the last batch the loop consumed, not of the batches read ahead).
* ``HostPrefetch`` alone (fast): it hands out the batches in order, answers a stop
  while the iterator blocks, records the state of the last batch handed out (not of
  the batches read ahead) and re-raises the iterator's errors in the loop's thread.
* A SIGTERM while the main thread is inside XLA compilation (a native call that runs no
  Python signal handler): the grace watchdog ends the CLI with status 75 and one line
  naming what the run was doing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from neo_jax.configs import smoke
from neo_jax.train import input_pipeline, trainer
from neo_jax.train.host_prefetch import HostPrefetch
from testlib.train import ROOT, logged_losses

STEPS = 10


class _StallsAfter:
  """The real iterator for ``n`` batches; then its ``next`` (with ``sigterm``) sends this
  process a SIGTERM and blocks forever (as a source that never yields would)."""

  def __init__(self, it, n: int, sigterm: bool = True):
    self.it, self.n, self.count, self.sigterm = it, n, 0, sigterm
    self.release = threading.Event()

  def __iter__(self):
    return self

  def __next__(self):
    if self.count == self.n:
      if self.sigterm:
        os.kill(os.getpid(), signal.SIGTERM)
      self.release.wait()
    self.count += 1
    return next(self.it)

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)


def _random_iterator():
  return input_pipeline.make_data_iterator(smoke.get_config())


def test_host_prefetch_order_state_stop_and_errors():
  ref = _random_iterator()
  want = [next(ref) for _ in range(4)]
  states = []
  probe = _random_iterator()
  for _ in range(4):
    next(probe)
    states.append(probe.get_state())

  it = _StallsAfter(_random_iterator(), 4, sigterm=False)
  batches = HostPrefetch(it, depth=2)
  for i in range(3):
    got = batches.next()
    for k in want[i]:
      np.testing.assert_array_equal(got[k], want[i][k], err_msg=k)
    # The reader is ahead (up to 2 batches queued + 1 in hand); the recorded state is
    # the one after batch i, which restores to batch i + 1.
    assert batches.consumed.state == states[i]
  fresh = _random_iterator()
  fresh.set_state(json.loads(batches.consumed.get_state()))
  np.testing.assert_array_equal(next(fresh)["input_ids"], want[3]["input_ids"])
  batches.next()                       # the 4th batch; the 5th never comes
  # It waits for the reader until asked to stop, then gives None: not before the stop
  # (the flag is set when it returns) and not long after (the poll interval, with a wide
  # margin for a loaded machine).
  flag, set_at = threading.Event(), []

  def request_stop():
    set_at.append(time.monotonic())
    flag.set()

  threading.Timer(0.3, request_stop).start()
  assert batches.next(stop=flag.is_set) is None
  assert flag.is_set()
  assert time.monotonic() - set_at[0] < 30
  it.release.set()
  batches.close()

  class Broken:
    def __next__(self):
      raise OSError("object store gone")

    def get_state(self):
      return {}

  with pytest.raises(OSError, match="object store gone"):
    HostPrefetch(Broken()).next()


@pytest.mark.slow
def test_sigterm_while_the_input_pipeline_stalls_saves_and_resumes_exactly(tmp_path,
                                                                          monkeypatch):
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  trainer.run(smoke.get_config(f"steps={STEPS}"), full)

  stalled = []

  def stalling_iterator(config, *args, **kwargs):    # the trainer's signature, passed on
    stalled.append(_StallsAfter(input_pipeline.make_data_iterator(config, *args, **kwargs), 6))
    return stalled[-1]

  monkeypatch.setattr(trainer, "make_data_iterator", stalling_iterator)
  c = smoke.get_config(f"steps={STEPS}")
  c.checkpoint.every_steps = 100
  t0 = time.monotonic()
  out = trainer.run(c, cut)
  took = time.monotonic() - t0
  stalled[0].release.set()
  # The pipeline yielded 6 batches; the loop may have consumed fewer when the notice came
  # (the reader runs ahead), and it saved exactly the step it reached.
  assert 1 <= out["step"] <= 6, out["step"]
  assert sorted(int(d) for d in os.listdir(os.path.join(cut, "checkpoints"))) == [out["step"]]
  assert took < 60, took

  monkeypatch.undo()
  trainer.run(smoke.get_config(f"steps={STEPS}"), cut)
  ref, got = logged_losses(full), logged_losses(cut)
  for step in range(out["step"] + 1, STEPS + 1):
    assert got[step] == ref[step], (step, got[step], ref[step])
  assert np.isfinite([got[s] for s in got]).all()


def test_sigterm_during_compilation_ends_within_the_grace_period(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)     # the step must really compile
  cmd = [sys.executable, "-m", "neo_jax.train", "--config=smoke:steps=5",
         f"--workdir={tmp_path / 'w'}", "--config.train.signal_grace_s=0.2"]
  p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in iter(p.stdout.readline, ""):
    lines.append(line)
    if line.startswith("Compiling the train step ...") and "done" not in line:
      t0 = time.monotonic()
      p.send_signal(signal.SIGTERM)
      break
  rest = p.communicate(timeout=120)[0]
  took = time.monotonic() - t0
  text = "".join(lines) + rest
  assert p.returncode == 75, text[-3000:]
  assert "Preemption notice 0.2 s ago and the run has not finished: it was compiling the " \
         "train step" in text, text[-3000:]
  assert "The last committed checkpoint is none" in text
  assert took < 30, took
