"""Preemption: a notice on any host makes every process save the same step, then stop.

* One process: a SIGTERM handler sets a flag (in the main thread only: Python
  delivers signals there); the trainer saves the step it is at and exits 0.
* Several processes (``jax.distributed`` initialised): JAX's preemption service
  (on by default in ``jax.distributed.initialize``) catches SIGTERM on whichever host
  gets it (and the TPU maintenance notice), tells every process, and agrees on a
  step: ``multihost_utils.reached_preemption_sync_point(step)`` turns True at that
  same step on every process, so the collective Orbax save is of one step. No Python
  handler is installed then (it would replace the service's).
"""

from __future__ import annotations

import signal
import threading

import jax


def _service_running() -> bool:
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    return distributed.global_state.preemption_sync_manager is not None
  except (ImportError, AttributeError):
    return False


class Preemption:
  """Context manager; ``reached(step)`` after every step says: save this step and stop."""

  def __init__(self):
    self.multi = jax.process_count() > 1 and _service_running()
    self.requested = False
    self._previous = None

  def _handle(self, *_):
    self.requested = True

  def __enter__(self) -> "Preemption":
    if not self.multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def reached(self, step: int) -> bool:
    """True when the run must save ``step`` and stop (the same step on every process).

    Must be called after every step, with the same step ids on every process."""
    if self.multi:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      self.requested = bool(multihost_utils.reached_preemption_sync_point(step))
    return self.requested
