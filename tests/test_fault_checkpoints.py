"""Issue 26, item 3: a committed checkpoint that does not restore.

The newest checkpoint's array files are truncated after it was committed (a disk or a
copy gone wrong, not Orbax): the restarted CLI says which step is unreadable and why,
resumes from the previous one with the losses of the uninterrupted run, and renames the
bad one out of Orbax's view (so the run can save that step again).
``--config.checkpoint.restore_step`` picks a checkpoint explicitly (newer ones renamed
``.superseded``). When no checkpoint restores, the CLI exits 2 (not restartable), names
every step and reason and renames nothing; a ``restore_step`` that names no checkpoint
is an error.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

from testlib.train import ROOT, logged_losses


def _cli(workdir, *extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  cmd = [sys.executable, "-m", "neo_jax.train", "--config=smoke:steps=8",
         f"--workdir={workdir}", "--config.checkpoint.every_steps=4", *extra]
  return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _truncate_arrays(step_dir: str) -> int:
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
           if os.path.getsize(f) > 64]
  for f in files:
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 2)
  return len(files)


def _dirs(workdir):
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


@pytest.mark.slow  # over a minute on 2 cores: `bash scripts/test.sh -m slow`
def test_corrupt_newest_checkpoint_falls_back_and_resumes_exactly(tmp_path):
  w = str(tmp_path / "run")
  r = _cli(w)
  assert r.returncode == 0, r.stderr[-3000:]
  ref = logged_losses(w)
  assert _truncate_arrays(os.path.join(w, "checkpoints", "8")) > 0

  r = _cli(w)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert "Checkpoint step 8 is unreadable (" in r.stdout, r.stdout[-3000:]
  assert "Resumed from checkpoint step 4" in r.stdout
  assert "8 -> 8.unreadable" in r.stdout
  assert _dirs(w) == ["4", "8", "8.unreadable"]
  got = logged_losses(w)
  for step in range(5, 9):
    assert got[step] == ref[step], (step, got[step], ref[step])

  # An explicit step: the newer checkpoint is renamed, the run goes on from step 4.
  r = _cli(w, "--config.checkpoint.restore_step=4")
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert "Resumed from checkpoint step 4" in r.stdout and "8 -> 8.superseded" in r.stdout
  assert _dirs(w) == ["4", "8", "8.superseded", "8.unreadable"]
  got = logged_losses(w)
  for step in range(5, 9):
    assert got[step] == ref[step], (step, got[step], ref[step])

  # Nothing restores (step 4's data state is not JSON, step 8's arrays are cut): exit 2,
  # every step named, nothing renamed.
  with open(os.path.join(w, "checkpoints", "4", "data", "process_0-of-1.json"), "w") as f:
    f.write("{not json")
  _truncate_arrays(os.path.join(w, "checkpoints", "8"))
  r = _cli(w)
  assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
  assert "No checkpoint restores: step 8: " in r.stdout and "; step 4: " in r.stdout, r.stdout
  assert "Resumed" not in r.stdout
  assert _dirs(w) == ["4", "8", "8.superseded", "8.unreadable"]
  r = _cli(w, "--config.checkpoint.restore_step=6")
  assert r.returncode == 1 and "checkpoint.restore_step=6: no committed checkpoint" in r.stderr
