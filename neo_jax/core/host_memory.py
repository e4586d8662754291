"""Giving freed host memory back to the operating system between phases of a run.

Tracing, initialising and compiling a train step allocate and free many small host
blocks (Python objects, XLA's compiler). glibc's allocator keeps freed blocks in
its heap, so the process's resident set stays at the phase's peak: measured on
issue 16's config A (150K vocabulary), 0.45 GB of the 1.8 GB resident after
initialisation and compilation was such free space. ``release_host_memory``
collects Python garbage and asks glibc to return free pages (``malloc_trim(0)``),
so the first step's temporaries reuse them instead of adding to the peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.cache
def _malloc_trim():
  """glibc's ``malloc_trim`` or None (another C library, or none found)."""
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name) if name else None
    return getattr(libc, "malloc_trim", None)
  except OSError:
    return None


def release_host_memory(collect: bool = True) -> bool:
  """Runs Python's garbage collector (unless ``collect`` is False), then glibc's
  ``malloc_trim(0)``.

  Returns:
    True if glibc released memory (``malloc_trim`` returned 1); False when nothing
    was released or the C library has no ``malloc_trim`` (musl, macOS): then this
    is only a ``gc.collect()``.
  """
  if collect:
    gc.collect()
  trim = _malloc_trim()
  return bool(trim(0)) if trim is not None else False


_TRIM_EVENT = "/jax/core/compile/backend_compile_duration"


@functools.cache
def trim_after_long_compiles(min_seconds: float = 1.0) -> None:
  """Gives freed host memory back after every XLA compile of ``min_seconds`` or more.

  Registers (once per process) a ``jax.monitoring`` listener on JAX's backend-compile
  duration event that calls ``release_host_memory(collect=False)`` (``malloc_trim``
  only: no garbage collection inside JAX's compile path). A compile frees what it
  allocated but glibc keeps it resident, and a step jitted by hand (no
  ``Setup.compile_train_step``, which trims after compiling) then allocates its
  temporaries on top: 0.4 GB of issue 28's config A peak (``bench/train_step_memory.py``).
  Short compiles (the many small programs of eager code) are left alone. Raises nothing;
  a no-op where the C library has no ``malloc_trim``.
  """
  import jax  # pylint: disable=import-outside-toplevel
  jax.monitoring.register_event_duration_secs_listener(compile_listener(min_seconds))


def compile_listener(min_seconds: float):
  """The ``jax.monitoring`` duration listener of ``trim_after_long_compiles``:
  ``(event, seconds, **kwargs) -> None``, trimming after a backend compile of at least
  ``min_seconds``."""
  def listener(event: str, duration: float, **kwargs) -> None:
    del kwargs
    if event == _TRIM_EVENT and duration >= min_seconds:
      release_host_memory(collect=False)
  return listener


def _status_kib(pid: int | str, field: str) -> int:
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except (OSError, ValueError, IndexError):
    pass
  return 0


def _children(pid: int) -> list[int]:
  """Descendant process ids of ``pid`` (children of any of its threads: Grain starts its
  workers from a thread, whose children the main thread's list does not show)."""
  import os  # pylint: disable=import-outside-toplevel
  out = []
  try:
    tasks = os.listdir(f"/proc/{pid}/task")
  except OSError:
    return []
  for t in tasks:
    try:
      with open(f"/proc/{pid}/task/{t}/children") as f:
        out += [int(x) for x in f.read().split()]
    except (OSError, ValueError):
      continue
  return out + [g for c in out for g in _children(c)]


def peak_rss_bytes(include_children: bool = True) -> tuple[int, int]:
  """``(this process's peak RSS, the sum of its live descendants' peak RSS)`` [bytes].

  Linux ``/proc/<pid>/status`` ``VmHWM`` (the resident set's high-water mark); the
  second value covers worker processes (Grain's ``mp_prefetch``) that are still
  running. ``(0, 0)`` where ``/proc`` is unavailable.
  """
  import os  # pylint: disable=import-outside-toplevel
  own = _status_kib("self", "VmHWM") * 1024
  kids = sum(_status_kib(c, "VmHWM") for c in _children(os.getpid())) * 1024 if include_children else 0
  return own, kids


def rss_bytes() -> int:
  """This process's current resident set [bytes] (``VmRSS``; 0 without ``/proc``)."""
  return _status_kib("self", "VmRSS") * 1024
