"""Preemption: a notice on any host makes every process save the same step, then stop,
within a grace period.

* One process: a SIGTERM handler sets a flag (Python runs it in the main thread, at
  the next bytecode); ``signal.set_wakeup_fd`` also hands the signal at once to a
  watcher thread, so the notice is known even while the main thread is inside a long
  native call (XLA compilation, a checkpoint restore). The trainer saves the step it is
  at (also when the notice comes while it waits on the input pipeline) and exits 0.
* Several processes (``jax.distributed`` initialised): JAX's preemption service (on by
  default in ``jax.distributed.initialize``) catches SIGTERM on whichever host gets it
  (and the TPU maintenance notice), tells every process, and agrees on a sync point:
  ``multihost_utils.reached_preemption_sync_point(n)`` turns True at the same call
  ``n`` on every process. No Python handler is installed then (it would replace the
  service's). A watcher thread learns of the notice from the coordination service's
  key ``RECEIVED_PREEMPTION_NOTICE`` (the key JAX's ``PreemptionSyncManager`` writes,
  jax 0.10.2), so every process knows the time of the notice.

``reached()`` is called in lockstep on every process: after every train step and between
evaluation batches; it numbers its calls itself, so a sync point can fall inside an
evaluation. The grace period (``train.signal_grace_s``, 30 s by default) counts from
the notice: if the run has not finished by then (a stalled input pipeline, a long
compilation, a save the object store does not complete, processes that cannot agree
because one is stuck), a watchdog prints one line naming what the run was doing and
the last committed checkpoint, and ends the process with status 75 (``exits.py``:
restart to resume).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time

import jax

from neo_jax.train import exits

NOTICE_KEY = "RECEIVED_PREEMPTION_NOTICE"


def _client():
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    return distributed.global_state
  except (ImportError, AttributeError):
    return None


def _service_running() -> bool:
  state = _client()
  return state is not None and getattr(state, "preemption_sync_manager", None) is not None


class Preemption:
  """Context manager over a whole run; ``reached()`` after every step says: save now
  and stop (the same call on every process).

  Args:
    grace_s: [s] from the notice to the forced end (<= 0: no watchdog).
    workdir: the run's work directory (named checkpoint in the watchdog's line).

  Attributes:
    requested: True once the run must save and stop (sticky).
    doing: what the run does now, for the watchdog's line (``stage`` sets it).
  """

  def __init__(self, grace_s: float = 30.0, workdir: str | None = None):
    self.multi = jax.process_count() > 1 and _service_running()
    self.grace_s, self.workdir = float(grace_s), workdir
    self.requested = False
    self.doing = "starting"
    self.notice_t: float | None = None
    self._calls = 0
    self._lock = threading.Lock()
    self._finished = threading.Event()
    self._previous = None
    self._wakeup = None

  # --- the notice ---------------------------------------------------------------
  def _handle(self, *_):
    self.requested = True
    self._noticed()

  def _noticed(self) -> None:
    with self._lock:
      if self.notice_t is not None:
        return
      self.notice_t = time.monotonic()
    if self.grace_s > 0:
      threading.Thread(target=self._watchdog, name="preemption-grace", daemon=True).start()

  def _read_wakeup(self, sock: socket.socket) -> None:
    while not self._finished.is_set():
      try:
        data = sock.recv(64)
      except OSError:
        return
      if not data:
        return
      if signal.SIGTERM in data:
        self._noticed()

  def _poll_service(self) -> None:
    client = _client().client
    while not self._finished.wait(1.0):
      try:
        client.key_value_try_get(NOTICE_KEY)
      except Exception:  # pylint: disable=broad-except  (NOT_FOUND until a notice)
        continue
      self._noticed()
      return

  def _watchdog(self) -> None:
    if self._finished.wait(self.grace_s):
      return
    exits.end(f"Preemption notice {self.grace_s:g} s ago and the run has not finished: it "
              f"was {self.doing}; the agreed save was not possible or did not finish within "
              "the grace period (train.signal_grace_s). The last committed checkpoint is "
              f"{exits.last_committed_text(self.workdir)}. Exiting with status "
              f"{exits.RESTARTABLE}: restart to resume.", exits.RESTARTABLE)

  def __enter__(self) -> "Preemption":
    if self.multi:
      threading.Thread(target=self._poll_service, name="preemption-notice",
                       daemon=True).start()
    elif threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      r, w = socket.socketpair()
      r.settimeout(None)
      w.setblocking(False)
      self._wakeup = (r, w, signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False))
      threading.Thread(target=self._read_wakeup, args=(r,), name="preemption-signal",
                       daemon=True).start()
    return self

  def __exit__(self, *exc) -> None:
    self._finished.set()
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    if self._wakeup is not None:
      r, w, old = self._wakeup
      signal.set_wakeup_fd(old)
      w.close()
      r.close()

  # --- the loop's questions -------------------------------------------------------
  @contextlib.contextmanager
  def stage(self, doing: str):
    """``doing`` is what the watchdog's line names while the block runs."""
    before, self.doing = self.doing, doing
    try:
      yield
    finally:
      self.doing = before

  def reached(self, step: int | None = None) -> bool:
    """True when the run must save and stop (the same call on every process).

    Must be called in lockstep on every process (after every step, between
    evaluation batches). ``step`` is unused (kept for the callers' readability)."""
    del step
    self._calls += 1
    if self.multi and not self.requested:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      self.requested = bool(multihost_utils.reached_preemption_sync_point(self._calls))
    return self.requested

  def stop_waiting(self) -> bool:
    """True when a wait on the input pipeline may be abandoned for the save: one
    process with a SIGTERM. (Several processes must agree on the step; they only can
    at ``reached``, so a stalled process waits and the grace period decides.)"""
    return not self.multi and self.requested
