"""Trainer processes of a local multi-process launch, started by the tests themselves
(``neo_jax/launch/local.py``'s commands), so each pid is known and each output line is kept with
the time it arrived."""

from __future__ import annotations

import os
import subprocess
import threading
import time

from neo_jax.launch import local
from testlib.train import ROOT


class Launch:
  """``n`` processes of ``cmd`` x ``devices`` CPU devices; ``lines[i]``: (time, line)."""

  def __init__(self, cmd: list[str], n: int = 2, devices: int = 2, env: dict | None = None):
    port = local.free_port()
    self.procs, self.lines = [], []
    for penv, argv in local.process_commands(cmd, n, devices, port):
      p = subprocess.Popen(argv, env={**os.environ, **(env or {}), **penv, "PYTHONPATH": ROOT},
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      lines: list = []
      threading.Thread(target=self._read, args=(p, lines), daemon=True).start()
      self.procs.append(p)
      self.lines.append(lines)

  @staticmethod
  def _read(p, lines):
    for line in iter(p.stdout.readline, ""):
      lines.append((time.monotonic(), line))

  def text(self, i: int) -> str:
    return "".join(l for _, l in list(self.lines[i]))

  def wait_for(self, i: int, needle: str, timeout: float = 400) -> float:
    """Waits until process ``i`` printed a line holding ``needle``; returns its time.

    Raises:
      AssertionError: a process ended first, or ``timeout`` [s] passed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      for t, line in list(self.lines[i]):
        if needle in line:
          return t
      assert all(p.poll() is None for p in self.procs), (needle, self.text(0)[-3000:],
                                                        self.text(1)[-3000:])
      time.sleep(0.05)
    raise AssertionError(f"no {needle!r} within {timeout} s")

  def wait(self, timeout: float = 400) -> list[int]:
    """Exit statuses of every process (killing all after ``timeout`` [s])."""
    deadline = time.monotonic() + timeout
    try:
      for p in self.procs:
        p.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
      self.kill()
    time.sleep(0.2)                     # the readers drain the pipes
    return [p.returncode for p in self.procs]

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()
