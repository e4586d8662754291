"""Small helpers shared by the benchmarks: peak memory, one measurement per fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys


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


def run_fresh(script: str, args: list[str]) -> dict:
  """Runs ``python script *args`` in a fresh process (its own memory peak) and returns
  the JSON object its last stdout line prints.

  Raises:
    subprocess.CalledProcessError: the measurement failed (its stderr is attached).
  """
  r = subprocess.run([sys.executable, script, *args], check=True, capture_output=True,
                     text=True, env=dict(os.environ))
  return json.loads(r.stdout.strip().splitlines()[-1])
