"""A ``gcloud compute tpus tpu-vm`` stand-in: TPU VM workers as home directories on loopback.

Put a ``gcloud`` shim that runs this file first on the PATH (``install``). It understands
the three commands ``launch/tpu_pod.py`` runs, with gcloud's flags for them (an unknown
flag is an error, exit 2, as in gcloud):

* ``scp SRC... TPU:DEST --worker=all|N``: copies into each worker's home (``~/`` = home).
* ``ssh TPU --worker=all|N --command=CMD``: runs ``bash -c CMD`` in every worker's home,
  all workers at once, with ``HOME`` = that directory (so ``~`` is the worker's disk);
  prints their output in worker order; exits with the largest status.
* ``describe TPU --format=value(networkEndpoints[i].ipAddress)``: ``127.0.0.1``.

Configuration (environment of the launcher):

* ``FAKE_GCLOUD_ROOT``: worker i of TPU t lives in ``$FAKE_GCLOUD_ROOT/t/worker<i>``.
* ``FAKE_GCLOUD_TPUS``: JSON ``{"tpu name": number of workers}``; the order of the names
  is the order of the global process ids (slice 0 first).
* ``FAKE_GCLOUD_WORKER_ENV``: JSON of extra variables for every worker (e.g.
  ``JAX_PLATFORMS``, ``XLA_FLAGS``: the worker's "hardware").
* ``FAKE_GCLOUD_COORDINATOR``: ``host:port``. A Cloud TPU worker learns its process id from
  the VM metadata; these workers have none, so each gets the explicit layout
  ``JAX_COORDINATOR_ADDRESS`` / ``JAX_PROCESS_COUNT`` / ``JAX_PROCESS_ID``
  (``launch/pod_worker.py`` passes it on to the trainer) and its own
  ``NEO_JAX_LIBTPU_LOCKFILE`` in its home.
* ``FAKE_GCLOUD_LOG``: every invocation's argv is appended to this file (JSON lines).

What is stood in: the machines (home directories of this host), ssh/scp (local
processes and copies), the TPU metadata (the explicit layout above). The commands the
workers run are the launcher's own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import subprocess
import sys

SELF = os.path.abspath(__file__)


def install(bin_dir: str, name: str = "gcloud") -> str:
  """Writes an executable ``bin_dir/name`` that runs this stand-in; returns its path."""
  os.makedirs(bin_dir, exist_ok=True)
  path = os.path.join(bin_dir, name)
  with open(path, "w") as f:
    f.write(f'#!/bin/sh\nexec "{sys.executable}" "{SELF}" "$@"\n')
  os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
  return path


def _tpus() -> dict:
  return json.loads(os.environ.get("FAKE_GCLOUD_TPUS", "{}"))


def worker_homes(tpu: str, worker: str) -> list[tuple[int, str]]:
  """``[(global process id, home)]`` of the selected workers of ``tpu``.

  Raises:
    SystemExit: unknown TPU or worker (gcloud's NOT_FOUND, status 1).
  """
  tpus = _tpus()
  if tpu not in tpus:
    raise SystemExit(f"ERROR: (gcloud.compute.tpus.tpu-vm) NOT_FOUND: TPU {tpu!r} "
                     f"(this stand-in has {sorted(tpus)})")
  offset = 0
  for name, n in tpus.items():
    if name == tpu:
      break
    offset += n
  ids = range(tpus[tpu]) if worker == "all" else [int(worker)]
  if any(i >= tpus[tpu] for i in ids):
    raise SystemExit(f"ERROR: worker {worker} out of range for {tpu} ({tpus[tpu]} workers)")
  root = os.environ["FAKE_GCLOUD_ROOT"]
  out = []
  for i in ids:
    home = os.path.join(root, tpu, f"worker{i}")
    os.makedirs(home, exist_ok=True)
    out.append((offset + i, home))
  return out


def worker_env(process_id: int, home: str) -> dict:
  """The environment of a worker's ssh session (no PYTHONPATH: the worker runs its own copy)."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("FAKE_GCLOUD_") and k != "PYTHONPATH"}
  env.update(json.loads(os.environ.get("FAKE_GCLOUD_WORKER_ENV", "{}")))
  env["HOME"] = home
  coord = os.environ.get("FAKE_GCLOUD_COORDINATOR")
  if coord:
    env.update(JAX_COORDINATOR_ADDRESS=coord, JAX_PROCESS_COUNT=str(sum(_tpus().values())),
               JAX_PROCESS_ID=str(process_id),
               NEO_JAX_LIBTPU_LOCKFILE=os.path.join(home, "libtpu_lockfile"))
  return env


def _remote_path(home: str, path: str) -> str:
  if path.startswith("~/"):
    return os.path.join(home, path[2:])
  if path == "~":
    return home
  return path if os.path.isabs(path) else os.path.join(home, path)


def cmd_ssh(a) -> int:
  procs = []
  for pid, home in worker_homes(a.tpu, a.worker):
    procs.append(subprocess.Popen(["bash", "-c", a.command or "true"], cwd=home,
                                  env=worker_env(pid, home), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
  rc = 0
  for p in procs:
    out, _ = p.communicate()
    sys.stdout.write(out.decode(errors="replace"))
    rc = max(rc, p.returncode)
  sys.stdout.flush()
  return rc


def cmd_scp(a) -> int:
  *srcs, dest = a.paths
  if ":" not in dest or any(":" in s for s in srcs):
    raise SystemExit("ERROR: this stand-in copies local files to TPU:DEST only")
  tpu, remote = dest.split(":", 1)
  for _, home in worker_homes(tpu, a.worker):
    target = _remote_path(home, remote)
    for s in srcs:
      if os.path.isdir(s):
        if not a.recurse:
          raise SystemExit(f"ERROR: {s} is a directory (use --recurse)")
        shutil.copytree(s, os.path.join(target, os.path.basename(s.rstrip("/")))
                        if os.path.isdir(target) else target, dirs_exist_ok=True)
      else:
        shutil.copy(s, os.path.join(target, os.path.basename(s)) if os.path.isdir(target)
                    else target)
  return 0


def cmd_describe(a) -> int:
  worker_homes(a.tpu, "0")
  m = re.fullmatch(r"value\(networkEndpoints\[(\d+)\]\.ipAddress\)", a.format or "")
  if not m:
    raise SystemExit(f"ERROR: this stand-in answers --format=value(networkEndpoints[i]"
                     f".ipAddress) only, got {a.format!r}")
  worker_homes(a.tpu, m.group(1))
  print("127.0.0.1")
  return 0


def parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="gcloud compute tpus tpu-vm")
  sub = ap.add_subparsers(dest="cmd", required=True)
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--zone", required=True)
  common.add_argument("--project")
  remote = argparse.ArgumentParser(add_help=False)
  remote.add_argument("--worker", default="0")
  remote.add_argument("--strict-host-key-checking", choices=("yes", "no", "ask"))
  remote.add_argument("--internal-ip", action="store_true")
  s = sub.add_parser("ssh", parents=[common, remote])
  s.add_argument("tpu")
  s.add_argument("--command")
  c = sub.add_parser("scp", parents=[common, remote])
  c.add_argument("paths", nargs="+")
  c.add_argument("--recurse", action="store_true")
  d = sub.add_parser("describe", parents=[common])
  d.add_argument("tpu")
  d.add_argument("--format")
  return ap


def main(argv: list[str]) -> int:
  if os.environ.get("FAKE_GCLOUD_LOG"):
    with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
      f.write(json.dumps(argv) + "\n")
  if argv[:3] != ["compute", "tpus", "tpu-vm"]:
    print(f"ERROR: this stand-in runs 'gcloud compute tpus tpu-vm ...' only, got {argv[:3]}",
          file=sys.stderr)
    return 2
  a = parser().parse_args(argv[3:])
  return {"ssh": cmd_ssh, "scp": cmd_scp, "describe": cmd_describe}[a.cmd](a)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
