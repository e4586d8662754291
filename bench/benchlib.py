"""Small helpers shared by the benchmarks (peak memory of the running process)."""

from __future__ import annotations


def hwm_mib() -> float:
  """VmHWM (peak resident set) of this process [MiB] (Linux ``/proc``)."""
  with open("/proc/self/status", encoding="ascii") as f:
    return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024


def reset_peak() -> float:
  """Resets VmHWM to the current resident set (Linux: ``5 > /proc/self/clear_refs``),
  so a later ``hwm_mib()`` is the peak of what runs in between; returns that start [MiB]."""
  with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
    f.write("5")
  return hwm_mib()
