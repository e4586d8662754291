"""Local multi-process launcher: N JAX processes on this machine (CPU testing).

    python -m neo_jax.launch.local --num_processes=2 --devices_per_process=2 -- \\
        python -m neo_jax.train --config smoke --workdir /tmp/mh

(``python launch/local.py ...`` in a checkout runs this module.)

Each process gets ``JAX_PLATFORMS=cpu``, ``--xla_force_host_platform_device_count``
fake devices and ``--coordinator_address=127.0.0.1:<port> --num_processes=N
--process_id=i`` appended to the command (``neo_jax.train`` passes them to
``jax.distributed.initialize``; collectives over gloo). Output lines are
prefixed with ``[i]``. If one process fails the others are terminated.
``--dry_run`` prints the commands (with their environment) and exits.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_commands(cmd: list[str], num_processes: int, devices_per_process: int,
                     port: int) -> list[tuple[dict, list[str]]]:
  """(extra environment, argv) of every process."""
  out = []
  for i in range(num_processes):
    env = {"JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"}
    argv = list(cmd) + [f"--coordinator_address=127.0.0.1:{port}",
                        f"--num_processes={num_processes}", f"--process_id={i}"]
    out.append((env, argv))
  return out


def _pump(i: int, stream, sink):
  for line in iter(stream.readline, ""):
    sink.write(f"[{i}] {line}")
    sink.flush()


def run(cmd: list[str], num_processes: int, devices_per_process: int, *,
        port: int | None = None, dry_run: bool = False, timeout: float | None = None) -> int:
  """Starts the processes and waits; returns the first non-zero exit code (or 0).

  Raises:
    subprocess.TimeoutExpired: ``timeout`` [s] passed (all processes are killed).
  """
  port = port or free_port()
  procs_spec = process_commands(cmd, num_processes, devices_per_process, port)
  if dry_run:
    for env, argv in procs_spec:
      print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(argv))
    return 0
  procs, pumps = [], []
  for i, (env, argv) in enumerate(procs_spec):
    p = subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    t = threading.Thread(target=_pump, args=(i, p.stdout, sys.stdout), daemon=True)
    t.start()
    procs.append(p)
    pumps.append(t)
  rc = 0
  deadline = None if timeout is None else time.monotonic() + timeout
  try:
    pending = list(procs)
    while pending:
      for p in list(pending):
        try:
          code = p.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
          continue
        pending.remove(p)
        if code and not rc:
          rc = code
          for q in pending:  # one failed: the others would wait on it forever
            q.terminate()
      if deadline is not None and pending and time.monotonic() > deadline:
        raise subprocess.TimeoutExpired(cmd, timeout)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for t in pumps:
      t.join(timeout=5)
  return rc


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--num_processes", type=int, default=2)
  ap.add_argument("--devices_per_process", type=int, default=2)
  ap.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
  ap.add_argument("--dry_run", action="store_true", help="print the commands and exit")
  ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- command to run in every process")
  a = ap.parse_args(argv)
  cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
  if not cmd:
    ap.error("give the command after --")
  return run(cmd, a.num_processes, a.devices_per_process, port=a.port, dry_run=a.dry_run)


if __name__ == "__main__":
  sys.exit(main())
