"""Host batches pulled in a background thread, so the loop never blocks inside the input
pipeline.

``next(data_iter)`` can take long (a slow source, an object store that stalls) or, for
a source whose records are all skipped, never return. Called from the train loop it
would hold the main thread where no preemption notice is looked at. ``HostPrefetch``
calls it in a thread instead and hands the batches over through a queue of ``depth``
(2) batches; the loop waits on the queue a ``poll_s`` at a time and asks ``stop()``
between waits (``preemption.Preemption.stop_waiting``).

Exact resume: with each batch the thread records the iterator's checkpoint state right
after yielding it (``get_state()``, deep-copied: the iterator moves on). ``consumed``
stands for the iterator in ``checkpointing.save``: its state is the one recorded with
the last batch the loop took, the state the iterator itself had at that point before
prefetching existed, so a resumed run reads the same batches. Grain's checkpoint handler
writes a non-``DatasetIterator``'s ``get_state()`` bytes as they are: ``consumed`` gives
the JSON Grain writes for the iterator (``json.dumps(state, indent=4)``), byte for byte.
The iterator's counters (``stats()``, the pipeline's skip counts and packing efficiency)
are recorded the same way. Memory: at most ``depth`` + 1 host batches besides the
pipeline's own buffers.
"""

from __future__ import annotations

import copy
import json
import queue
import threading
from typing import Any, Callable


class ConsumedState:
  """What the loop has consumed: the iterator's state and counters after the last batch
  it took. Other attributes are the live iterator's (ahead by up to ``depth`` batches)."""

  def __init__(self, iterator: Any):
    self._iterator = iterator
    self.state = copy.deepcopy(iterator.get_state())
    self._stats = _stats(iterator)

  def get_state(self) -> bytes:
    """The JSON Grain's checkpoint handler writes for a ``DatasetIterator``."""
    return json.dumps(self.state, indent=4).encode()

  def stats(self) -> dict:
    """The iterator's ``stats()`` recorded with the last batch consumed.

    Raises:
      AttributeError: the iterator has no ``stats()`` (random batches).
    """
    if self._stats is None:
      raise AttributeError("the iterator has no stats()")
    return dict(self._stats)

  def __getattr__(self, name):
    return getattr(self._iterator, name)


def _stats(iterator) -> dict | None:
  fn = getattr(iterator, "stats", None)
  return dict(fn()) if callable(fn) else None


class _Failure:
  def __init__(self, error: BaseException):
    self.error = error


class HostPrefetch:
  """Background reader of ``iterator``.

  Args:
    iterator: a checkpointable iterator (``get_state`` / ``set_state``) of host batches,
      already restored: the thread starts on the first ``next``.
    depth: batches read ahead at most.

  Attributes:
    iterator: the wrapped iterator (to restore into before the first ``next``).
    consumed: ``ConsumedState`` of the last batch handed out (for checkpoints, metrics).
  """

  def __init__(self, iterator: Any, depth: int = 2):
    self.iterator, self.depth = iterator, depth
    self.consumed: ConsumedState | None = None
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _put(self, item) -> None:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return
      except queue.Full:
        continue

  def _run(self) -> None:
    try:
      while not self._stop.is_set():
        batch = next(self.iterator)
        self._put((batch, copy.deepcopy(self.iterator.get_state()), _stats(self.iterator)))
    except BaseException as e:  # pylint: disable=broad-except  (re-raised in the loop)
      self._put(_Failure(e))

  def start(self) -> None:
    """Records the iterator's current state as consumed and starts the thread."""
    if self._thread is None:
      self.consumed = ConsumedState(self.iterator)
      self._thread = threading.Thread(target=self._run, name="host-prefetch", daemon=True)
      self._thread.start()

  def next(self, stop: Callable[[], bool] = lambda: False, poll_s: float = 0.1) -> dict | None:
    """The next host batch; None when ``stop()`` turned True before one was ready.

    Raises:
      Whatever the iterator raised (``StopIteration`` at its end), in this thread.
    """
    self.start()
    while True:
      if stop():
        return None
      try:
        item = self._queue.get(timeout=poll_s)
      except queue.Empty:
        continue
      if isinstance(item, _Failure):
        self._stop.set()
        raise item.error
      batch, state, stats = item
      self.consumed.state, self.consumed._stats = state, stats  # pylint: disable=protected-access
      return batch

  def close(self, timeout_s: float = 1.0) -> None:
    """Stops the thread; one blocked inside the iterator is left behind (a daemon)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout_s)
