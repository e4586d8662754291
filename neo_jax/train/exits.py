"""How a run ends when something outside it fails: exit statuses and the one last line.

Exit statuses of ``python -m neo_jax.train`` (what a pod restarter keys on):

* ``0``: finished, or preempted after the agreed save (``preemption.py``);
* ``75`` (``RESTARTABLE``, ``EX_TEMPFAIL`` of ``sysexits.h``): ended by something a
  restart cures (a peer process died, a preemption notice whose grace period ran out
  before a save was possible); the same command resumes from the last committed
  checkpoint;
* ``2`` (``CONFIG``): the preflight found the work directory unusable (missing bucket,
  wrong endpoint, no credentials): a restart does not help, fix the flags;
* ``1``: any other error (Python's traceback says which).

An exception may carry its status (``exit_status``; ``status_of``).
``end(line, status)`` prints the line on stdout and leaves the process at
once (``os._exit``: no Python clean-up, no JAX shutdown barrier that would wait for a
dead peer), from any thread.
"""

from __future__ import annotations

import os
import sys
import threading

RESTARTABLE = 75
CONFIG = 2


def committed_steps(workdir: str, timeout_s: float = 5.0) -> list[int] | None:
  """Committed checkpoint steps under ``{workdir}/checkpoints`` (Orbax's own test for a
  finalized step), ascending; None when the store does not answer within ``timeout_s``
  [s] or the listing fails."""
  out: list = []

  def scan():
    try:
      import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
      from neo_jax.core import paths, run_layout  # pylint: disable=g-import-not-at-top
      out.append(sorted(ocp.utils.checkpoint_steps(
          paths.resolve(run_layout.checkpoints_dir(workdir)))))
    except Exception:  # pylint: disable=broad-except
      out.append(None)

  t = threading.Thread(target=scan, daemon=True)
  t.start()
  t.join(timeout_s)
  return out[0] if out else None


def last_committed_text(workdir: str) -> str:
  """``"step N"``, ``"none"`` or ``"unknown (the store did not answer)"``."""
  steps = committed_steps(workdir)
  if steps is None:
    return "unknown (the store did not answer)"
  return f"step {steps[-1]}" if steps else "none"


def status_of(exc: BaseException | None) -> int:
  """The exit status for ending with ``exc`` (0 for None, else its ``exit_status`` or 1)."""
  return 0 if exc is None else int(getattr(exc, "exit_status", 1))


def end(line: str, status: int) -> None:
  """Prints ``line`` (stdout, flushed; stderr flushed too) and exits the process with
  ``status``."""
  try:
    sys.stderr.flush()
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
  except Exception:  # pylint: disable=broad-except
    pass
  os._exit(status)  # pylint: disable=protected-access
