"""A prefetch bounded in bytes, not in elements (issue 22).

Grain's prefetches (``ReadOptions.prefetch_buffer_size``,
``MultiprocessingOptions.per_worker_buffer_size``,
``grain.experimental.ThreadPrefetchIterDataset``) hold a number of elements, and
``grain.experimental.pick_performance_config`` turns a RAM budget into such a
number from the mean size of five elements. A NEO mixture's samples range from a
few KB (text) to ~50 MB (a 128-frame video's pixels), so any element count is
either too small for text or gigabytes for video. ``BytePrefetchIterDataset``
processes ahead in one background thread until the elements it holds reach
``max_bytes`` (always at least one), which bounds the pipeline's memory whatever
the mixture.

Checkpointing: each prefetched element is stored with its parent's state after it,
so ``get_state()`` is the state after the last element the consumer took, and a
restore yields exactly the elements an uninterrupted run would have.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import grain
import numpy as np


def nbytes(element: Any) -> int:
  """[bytes] of the numpy arrays in a (nested) dict / list element; 64 per other leaf."""
  if isinstance(element, np.ndarray):
    return int(element.nbytes)
  if isinstance(element, dict):
    return sum(nbytes(v) for v in element.values())
  if isinstance(element, (list, tuple)):
    return sum(nbytes(v) for v in element)
  return 64


class BytePrefetchIterDataset(grain.IterDataset):
  """Prefetches ``parent`` in a thread while it holds fewer than ``max_bytes``.

  Args:
    parent: the iter dataset to read ahead.
    max_bytes: [bytes] the budget of elements held (> 0); one element larger than
      it is still held alone.
  Raises:
    ValueError: ``max_bytes <= 0``.
  """

  def __init__(self, parent: grain.IterDataset, max_bytes: int):
    super().__init__(parent)
    if max_bytes <= 0:
      raise ValueError(f"max_bytes={max_bytes} must be > 0.")
    self._max_bytes = int(max_bytes)

  def __iter__(self) -> "BytePrefetchIterator":
    return BytePrefetchIterator(self._parent.__iter__(), self._max_bytes)

  def __str__(self) -> str:
    return f"BytePrefetchIterDataset(max_bytes={self._max_bytes})"


_END = object()


class BytePrefetchIterator(grain.DatasetIterator):
  """Iterator of ``BytePrefetchIterDataset``; ``held_bytes`` / ``peak_bytes`` for tests."""

  def __init__(self, parent: grain.DatasetIterator, max_bytes: int):
    super().__init__(parent)
    self._max_bytes = max_bytes
    self._state = parent.get_state()
    self._cond = threading.Condition()
    self._queue: collections.deque = collections.deque()  # (element, state after, bytes)
    self.held_bytes = 0
    self.peak_bytes = 0
    self._thread: threading.Thread | None = None
    self._stop = False
    self._closed = False

  def _produce(self) -> None:
    while True:
      with self._cond:
        while not self._stop and self._queue and self.held_bytes >= self._max_bytes:
          self._cond.wait()
        if self._stop:
          return
      try:
        el = next(self._parent)
        item = (el, self._parent.get_state(), nbytes(el))
      except StopIteration:
        item = (_END, None, 0)
      except BaseException as e:  # pylint: disable=broad-except  # re-raised to the consumer
        item = (e, None, 0)
      with self._cond:
        if self._stop:
          return
        self._queue.append(item)
        self.held_bytes += item[2]
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)
        self._cond.notify_all()
        if item[0] is _END or isinstance(item[0], BaseException):
          return

  def _start(self) -> None:
    self._stop = False
    self._thread = threading.Thread(target=self._produce, daemon=True,
                                    name="neo_jax-byte-prefetch")
    self._thread.start()

  def __next__(self) -> Any:
    if self._thread is None and not self._closed:
      self._start()
    with self._cond:
      while not self._queue:
        self._cond.wait()
      el, state, size = self._queue[0]
      if el is _END:
        raise StopIteration
      if isinstance(el, BaseException):
        raise el
      self._queue.popleft()
      self.held_bytes -= size
      self._state = state
      self._cond.notify_all()
    return el

  def _halt(self) -> None:
    if self._thread is None:
      return
    with self._cond:
      self._stop = True
      self._cond.notify_all()
    self._thread.join()
    self._thread = None
    self._queue.clear()
    self.held_bytes = 0

  def get_state(self) -> dict[str, Any]:
    return self._state

  def set_state(self, state: dict[str, Any]) -> None:
    self._halt()
    self._parent.set_state(state)
    self._state = state

  def close(self) -> None:
    """Tells the background thread to stop, without waiting for it (Grain closes
    iterators from ``__del__``, possibly on the very thread the producer waits on); it
    is a daemon thread, so it never holds the process open. The held elements are
    dropped and a consumer still waiting gets ``StopIteration``."""
    with self._cond:
      self._stop = True
      self._queue.clear()
      self._queue.append((_END, None, 0))
      self.held_bytes = 0
      self._closed = True
      self._cond.notify_all()
    self._thread = None
