"""A dead peer: every surviving process leaves within ``train.peer_timeout_s`` with one
line and status 75 (restart to resume), instead of a gloo error, a wait and an abort.

JAX's coordination service (``jax.distributed``, hosted by process 0) declares a
process dead when its heartbeats stop for ``heartbeat_timeout_seconds``; by default it
then aborts every other process (``LOG(FATAL)``, SIGABRT) after 100 s, and a Python
callback cannot be given instead in jax 0.10.2 (the client's
``missed_heartbeat_callback`` cannot be called with the status it gets). So
``distributed.initialize`` turns on JAX's recoverable mode (``jax_enable_recoverability``:
the service records a dead task instead of aborting the others) with a heartbeat
timeout of ``peer_timeout_s - 5`` s, and ``PeerWatch`` asks the service once a second
which processes are alive (``client.get_live_nodes``, the call behind JAX's
``multihost_utils.live_devices``). A process missing from the answer that did not say
it ended (a key ``neo_jax/ended/<i>``, "<exit status> <why>", in the service's
key-value store) is gone: this
process prints ``process i is gone ...; the last committed checkpoint is step N;
restart to resume`` and exits 75 at once (``exits.end``: no Python clean-up, which
would wait on the dead peer). A peer that ended with an error makes the others end
with its status ("process i stopped (...)") so no process waits on it in a collective.

When process 0 itself dies, the service dies with it: JAX ends the other processes at
once with its own fatal line ("Terminating process because the JAX distributed service
detected fatal errors"), status 134 (SIGABRT).

Recoverable mode drops JAX's shutdown barrier, so the end is ordered here: each process
records how it ended; processes other than 0 disconnect (``jax.distributed.shutdown``)
and process 0 waits (at most ``peer_timeout_s``) until they have, then ends the
service by exiting. A main-thread error that looks like a lost peer (a gloo / runtime
error) waits up to ``peer_timeout_s`` for the watch's verdict before it is re-raised.
"""

from __future__ import annotations

import threading
import time

import jax

from neo_jax.train import exits

ENDED = "neo_jax/ended/"


def heartbeat_timeout_s(peer_timeout_s: float) -> int:
  """JAX's heartbeat timeout [s] for a ``peer_timeout_s`` budget: 5 s less (>= 5)."""
  return max(int(peer_timeout_s) - 5, 5)


def _state():
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state


def _looks_like_lost_peer(exc: BaseException) -> bool:
  text = f"{type(exc).__name__} {exc}"
  return isinstance(exc, jax.errors.JaxRuntimeError) or any(
      t in text for t in ("gloo", "Gloo", "DEADLINE_EXCEEDED", "UNAVAILABLE", "Barrier"))


class PeerWatch:
  """Context manager over a run of several processes (a no-op for one).

  Args:
    workdir: the run's work directory (the last committed checkpoint in the line).
    timeout_s: ``train.peer_timeout_s`` [s].
    poll_s: [s] between questions to the service.
  """

  def __init__(self, workdir: str, timeout_s: float = 30.0, poll_s: float = 1.0):
    self.workdir, self.timeout_s, self.poll_s = workdir, float(timeout_s), poll_s
    self.client = None
    self.live: set[int] | None = None     # the service's last answer
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def __enter__(self) -> "PeerWatch":
    state = _state() if jax.process_count() > 1 else None
    self.client = getattr(state, "client", None)
    if self.client is not None:
      self._thread = threading.Thread(target=self._watch, name="peer-watch", daemon=True)
      self._thread.start()
    return self

  def _ended(self) -> dict[int, str]:
    out = {}
    for key, value in self.client.key_value_dir_get(ENDED):
      try:
        out[int(key.rsplit("/", 1)[-1])] = value
      except ValueError:
        continue
    return out

  def _watch(self) -> None:
    me, ids = jax.process_index(), list(range(jax.process_count()))
    while not self._stop.is_set():
      try:
        live = set(self.client.get_live_nodes(ids))
        ended = self._ended()           # after ``live``: a peer records before it leaves
      except Exception:  # pylint: disable=broad-except
        if self._stop.is_set():
          return
        time.sleep(self.poll_s)
        continue
      if self._stop.is_set():
        return
      self.live = live
      for i in ids:
        if i == me:
          continue
        how = ended.get(i)
        if how is not None and not how.startswith("0 "):
          status, why = how.split(" ", 1)
          exits.end(f"Process {i} stopped ({why}; its output says more); the last committed "
                    f"checkpoint is {exits.last_committed_text(self.workdir)}. Exiting with "
                    f"status {status}.", int(status))
        if i not in live and how is None:
          exits.end(f"Process {i} is gone (no heartbeat for "
                    f"{heartbeat_timeout_s(self.timeout_s)} s); the last committed checkpoint "
                    f"is {exits.last_committed_text(self.workdir)}; restart to resume "
                    f"(exit status {exits.RESTARTABLE}).", exits.RESTARTABLE)
      self._stop.wait(self.poll_s)

  def __exit__(self, exc_type, exc, tb) -> bool:
    if self.client is None:
      return False
    if exc is not None and _looks_like_lost_peer(exc):
      # Probably a peer died under a collective: the watch ends this process when the
      # service confirms it; re-raise when it does not within the timeout.
      deadline = time.monotonic() + self.timeout_s
      while time.monotonic() < deadline and self._thread.is_alive():
        time.sleep(0.2)
    how = (f"{exits.status_of(exc)} " +
           ("ok" if exc is None else f"{type(exc).__name__}: {str(exc)[:200]}"))
    try:
      self.client.key_value_set(f"{ENDED}{jax.process_index()}", how)
    except Exception:  # pylint: disable=broad-except
      pass
    if jax.process_index() == 0:
      self._wait_for_peers_to_leave()
      self._stop.set()
    else:
      self._stop.set()
      jax.distributed.shutdown()
    return False

  def _wait_for_peers_to_leave(self) -> None:
    """Process 0 hosts the service: it leaves last, when the watch sees no other
    process alive (at most ``timeout_s`` later)."""
    others = set(range(1, jax.process_count()))
    deadline = time.monotonic() + self.timeout_s
    while time.monotonic() < deadline and self._thread.is_alive():
      if self.live is not None and not others & self.live:
        return
      time.sleep(0.05)
