"""Preemption: a SIGTERM asks the run to save a checkpoint and exit cleanly.

``SigtermFlag`` records the signal (in the main thread only: Python delivers
signals there) and restores the previous handler on exit. The trainer checks
``requested`` after every step; on a request it saves that step and stops.
"""

from __future__ import annotations

import signal
import threading


class SigtermFlag:
  """Context manager: ``requested`` becomes True once SIGTERM arrives."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, *_):
    self.requested = True

  def __enter__(self) -> "SigtermFlag":
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
