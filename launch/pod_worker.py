"""The worker side of ``launch/tpu_pod.py``: environment, detached job, status, logs, stop.

``tpu_pod.py`` ships the checkout to ``~/<remote_dir>`` on every TPU VM worker and runs
this script there over ``gcloud compute tpus tpu-vm ssh --worker=all``:

    python3 launch/pod_worker.py setup                       # uv, .venv (Python 3.11), install
    python3 launch/pod_worker.py start --job=J --workdir=W [--env=K=V ...] -- <train args>
    python3 launch/pod_worker.py status --job=J
    python3 launch/pod_worker.py logs --job=J [--lines=N]
    python3 launch/pod_worker.py stop --job=J [--timeout=S]

* ``setup``: installs ``uv`` (``pip install --user uv==UV_VERSION``) when none is on the
  PATH, creates ``.venv`` with ``uv venv --python 3.11`` (uv fetches a Python 3.11 when the
  VM image has only its system 3.10) and installs ``uv pip install -r requirements-pod.txt
  -e .[tpu]`` (the runtime lock file, no torch: ``launch/pod_requirements.py``).
* ``start``: kills stale processes that hold the TPU device files and removes libtpu's
  lock file (as MaxText's ``multihost_runner.py`` does before each run), then starts a
  detached supervisor (own session, SIGHUP ignored: it outlives the ssh connection) that
  runs ``.venv/bin/python -m neo_jax.train --distributed --workdir=W <train args>``,
  writes its output to ``~/neo_jax_jobs/<job>/train.log`` and copies that log to
  ``<workdir>/logs/<job>/<worker>.log`` every ``--log_sync_s`` seconds and at the end
  (``gs://`` work directories through ``neo_jax.core.paths``).
* ``stop``: SIGTERM to the trainer, i.e. the preemption path: every process saves the same
  step and exits 0 (``neo_jax/train/preemption.py``); SIGKILL after ``--timeout``.

Process layout: on a Cloud TPU VM ``jax.distributed`` reads it from the VM metadata (and the
``MEGASCALE_*`` variables for several slices). A worker without that metadata gives it in
its environment: ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``JAX_PROCESS_COUNT``
and ``JAX_PROCESS_ID`` (the names MaxText's CPU multihost runner exports); they become the
trainer's ``--coordinator_address/--num_processes/--process_id``. ``NEO_JAX_LIBTPU_LOCKFILE``
moves the lock file (default ``/tmp/libtpu_lockfile``). The tests' loopback workers
(``tests/testlib/fake_gcloud.py``) use both.

Standard library only, Python >= 3.8: ``setup`` runs under the VM's system ``python3``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the unpacked checkout
VENV = os.path.join(ROOT, ".venv")
JOBS_DIR = os.path.join(os.path.expanduser("~"), "neo_jax_jobs")
UV_VERSION = "0.13.9"
PYTHON_VERSION = "3.11"
# TPU chips: /dev/accel* (v2-v4), /dev/vfio/<n> (v5e, v5p, v6e).
DEVICE_GLOBS = ("/dev/accel*", "/dev/vfio/[0-9]*")


def log(msg: str) -> None:
  print(f"[{worker_label()}] {msg}", flush=True)


def worker_label() -> str:
  """``process<i>`` with an explicit layout, else ``slice<s>-<hostname>``; a started job's
  label is kept in its state (``status`` / ``logs`` run without the job's ``--env``)."""
  if os.environ.get("NEO_JAX_WORKER_LABEL"):
    return os.environ["NEO_JAX_WORKER_LABEL"]
  if os.environ.get("JAX_PROCESS_ID"):
    return f"process{os.environ['JAX_PROCESS_ID']}"
  return f"slice{os.environ.get('MEGASCALE_SLICE_ID', '0')}-{socket.gethostname()}"


def run(argv: list, **kw) -> None:
  """Runs ``argv`` (printed first); raises SystemExit with its status when it fails."""
  log("$ " + " ".join(argv))
  rc = subprocess.call(argv, **kw)
  if rc:
    raise SystemExit(f"[{worker_label()}] failed ({rc}): {' '.join(argv)}")


# ----------------------------------------------------------------------------- setup
def find_uv() -> str | None:
  local = os.path.join(os.path.expanduser("~"), ".local", "bin", "uv")
  return shutil.which("uv") or (local if os.access(local, os.X_OK) else None)


def venv_python() -> str:
  return os.path.join(VENV, "bin", "python")


def venv_is_usable() -> bool:
  """``.venv/bin/python`` exists and is Python >= 3.11."""
  if not os.access(venv_python(), os.X_OK):
    return False
  rc = subprocess.call([venv_python(), "-c", "import sys; sys.exit(sys.version_info < (3, 11))"])
  return rc == 0


def setup() -> None:
  """uv, the virtual environment and the package with the ``tpu`` extra (no torch)."""
  uv = find_uv()
  if uv is None:
    run([sys.executable, "-m", "pip", "install", "--user", "--quiet", f"uv=={UV_VERSION}"])
    uv = find_uv()
    if uv is None:
      raise SystemExit("uv is not on the PATH after 'pip install --user uv'.")
  if not venv_is_usable():
    run([uv, "venv", "--python", PYTHON_VERSION, VENV], cwd=ROOT)
  req = os.path.join(ROOT, "requirements-pod.txt")
  if not os.path.exists(req):
    raise SystemExit(f"{req} is missing: ship the code with launch/tpu_pod.py --setup.")
  run([uv, "pip", "install", "--python", venv_python(), "-r", req, "-e", ".[tpu]"], cwd=ROOT)
  run([venv_python(), "-c", "import jax, neo_jax; print('neo_jax from', neo_jax.__file__, "
       "'| jax', jax.__version__)"], cwd=ROOT)


# ------------------------------------------------------------------- stale processes
def device_holders(device_globs=DEVICE_GLOBS) -> dict:
  """``{pid: device path}`` of the processes with a TPU device file open (``/proc`` scan)."""
  devices = {os.path.realpath(p) for g in device_globs for p in glob.glob(g)}
  out = {}
  if not devices:
    return out
  for fd_dir in glob.glob("/proc/[0-9]*/fd"):
    pid = int(fd_dir.split("/")[2])
    if pid == os.getpid():
      continue
    try:
      for fd in os.listdir(fd_dir):
        target = os.path.realpath(os.path.join(fd_dir, fd))
        if target in devices:
          out[pid] = target
          break
    except OSError:  # gone, or another user's process
      continue
  return out


def clear_stale_tpu(device_globs=DEVICE_GLOBS, lockfile: str | None = None,
                    wait_s: float = 30.0) -> list:
  """Kills (SIGKILL) the processes holding TPU device files, waits for them, removes the
  libtpu lock file. Returns the killed pids."""
  lockfile = lockfile or os.environ.get("NEO_JAX_LIBTPU_LOCKFILE", "/tmp/libtpu_lockfile")
  holders = device_holders(device_globs)
  for pid, dev in sorted(holders.items()):
    log(f"killing stale process {pid} (holds {dev})")
    try:
      os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  deadline = time.monotonic() + wait_s
  while any(_alive(p) for p in holders) and time.monotonic() < deadline:
    time.sleep(0.2)
  if os.path.lexists(lockfile):
    try:
      os.remove(lockfile)
    except PermissionError:
      subprocess.call(["sudo", "-n", "rm", "-f", lockfile])
    log(f"removed {lockfile}")
  return sorted(holders)


def _alive(pid: int) -> bool:
  """True while ``pid`` runs (a zombie counts as ended)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


# ------------------------------------------------------------------------------ jobs
def job_dir(job: str) -> str:
  return os.path.join(JOBS_DIR, job)


def read_state(job: str) -> dict:
  try:
    with open(os.path.join(job_dir(job), "state.json")) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def write_state(job: str, **kw) -> dict:
  state = dict(read_state(job), **kw)
  path = os.path.join(job_dir(job), "state.json")
  with open(path + ".tmp", "w") as f:
    json.dump(state, f)
  os.replace(path + ".tmp", path)
  return state


def is_running(job: str) -> bool:
  state = read_state(job)
  return "rc" not in state and any(_alive(state[k]) for k in ("supervisor", "pid") if k in state)


def explicit_layout() -> list:
  """Trainer flags from ``JAX_PROCESS_COUNT`` / ``JAX_PROCESS_ID`` (none on TPU VMs)."""
  if not os.environ.get("JAX_PROCESS_ID"):
    return []
  coord = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if not coord or not os.environ.get("JAX_PROCESS_COUNT"):
    raise SystemExit("JAX_PROCESS_ID needs JAX_COORDINATOR_ADDRESS and JAX_PROCESS_COUNT.")
  return [f"--coordinator_address={coord}", f"--num_processes={os.environ['JAX_PROCESS_COUNT']}",
          f"--process_id={os.environ['JAX_PROCESS_ID']}"]


def start(job: str, workdir: str, env_pairs: list, train_args: list, log_sync_s: float) -> None:
  """Clears the TPU and starts the detached supervisor of the training process."""
  if is_running(job):
    raise SystemExit(f"[{worker_label()}] job {job!r} is running; stop it first (--stop).")
  if not os.access(venv_python(), os.X_OK):
    raise SystemExit(f"{venv_python()} is missing: run the launcher with --setup first.")
  extra = dict(kv.split("=", 1) for kv in env_pairs)
  os.environ.update(extra)
  extra["NEO_JAX_WORKER_LABEL"] = worker_label()
  clear_stale_tpu()
  argv = [venv_python(), "-m", "neo_jax.train", "--distributed", f"--workdir={workdir}"]
  argv += explicit_layout() + list(train_args)
  os.makedirs(job_dir(job), exist_ok=True)
  log_path = os.path.join(job_dir(job), "train.log")
  with open(os.path.join(job_dir(job), "state.json"), "w") as f:
    json.dump({"job": job, "argv": argv, "env": extra, "label": extra["NEO_JAX_WORKER_LABEL"],
               "started": time.time()}, f)
  sup = [sys.executable, os.path.abspath(__file__), "supervise", f"--job={job}",
         f"--workdir={workdir}", f"--log_sync_s={log_sync_s}", "--"] + argv
  with open(log_path, "ab") as out, open(os.devnull, "rb") as devnull:
    p = subprocess.Popen(sup, cwd=ROOT, env=dict(os.environ, **extra), stdin=devnull,
                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
  write_state(job, supervisor=p.pid)
  log(f"started job {job!r} (supervisor pid {p.pid}); log {log_path}")


def log_destination(workdir: str, job: str) -> str:
  return workdir.rstrip("/") + f"/logs/{job}/{worker_label()}.log"


def copy_log(src: str, dst: str) -> None:
  """Copies the log to a local path or a URL (``gs://``: ``neo_jax.core.paths`` in .venv)."""
  if "://" not in dst:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst + ".tmp")
    os.replace(dst + ".tmp", dst)
    return
  code = ("import sys; from neo_jax.core import paths; "
          "paths.write_text(sys.argv[2], open(sys.argv[1], errors='replace').read())")
  subprocess.call([venv_python() if os.access(venv_python(), os.X_OK) else sys.executable,
                   "-c", code, src, dst], cwd=ROOT)


def supervise(job: str, workdir: str, argv: list, log_sync_s: float) -> int:
  """Runs the trainer (same stdout: the log), forwards SIGTERM, syncs the log; its status."""
  signal.signal(signal.SIGHUP, signal.SIG_IGN)
  print(f"[{worker_label()}] {time.strftime('%Y-%m-%d %H:%M:%S')} job {job}: "
        + " ".join(argv), flush=True)
  child = subprocess.Popen(argv, cwd=ROOT)
  write_state(job, pid=child.pid)
  signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
  src, dst = os.path.join(job_dir(job), "train.log"), log_destination(workdir, job)
  while True:
    try:
      rc = child.wait(timeout=log_sync_s)
      break
    except subprocess.TimeoutExpired:
      copy_log(src, dst)
  print(f"[{worker_label()}] {time.strftime('%Y-%m-%d %H:%M:%S')} job {job} exited with "
        f"status {rc}", flush=True)
  write_state(job, rc=rc, ended=time.time())
  copy_log(src, dst)
  return rc


def status(job: str) -> None:
  state = read_state(job)
  if not state:
    log(f"job {job!r}: not started")
    return
  if "rc" in state:
    what = f"exited with status {state['rc']}"
  elif is_running(job):
    what = f"running (pid {state.get('pid', state.get('supervisor'))}, " \
           f"{(time.time() - state['started']) / 60:.1f} min)"
  else:
    what = "ended without a status (killed)"
  last = tail(os.path.join(job_dir(job), "train.log"), 1)
  log(f"job {job!r}: {what}" + (f" | {last[-1]}" if last else ""))


def tail(path: str, lines: int) -> list:
  try:
    with open(path, errors="replace") as f:
      return [l.rstrip("\n") for l in f.readlines()[-lines:]]
  except OSError:
    return []


def logs(job: str, lines: int) -> None:
  print(f"== {worker_label()}: {os.path.join(job_dir(job), 'train.log')} ==")
  for line in tail(os.path.join(job_dir(job), "train.log"), lines):
    print(line)
  sys.stdout.flush()


def stop(job: str, timeout: float) -> None:
  """SIGTERM to the trainer (save + exit), SIGKILL to the job's session after ``timeout``."""
  state = read_state(job)
  if not is_running(job):
    log(f"job {job!r} is not running")
    return
  pid = state.get("pid", state.get("supervisor"))
  log(f"stopping job {job!r}: SIGTERM to {pid}")
  try:
    os.kill(pid, signal.SIGTERM)
  except ProcessLookupError:
    pass
  deadline = time.monotonic() + timeout
  while is_running(job) and time.monotonic() < deadline:
    time.sleep(0.5)
  if is_running(job):
    log(f"still running after {timeout:.0f} s: SIGKILL")
    try:
      os.killpg(os.getpgid(state["supervisor"]), signal.SIGKILL)
    except (ProcessLookupError, KeyError):
      pass
    write_state(job, rc=-signal.SIGKILL, ended=time.time())
  status(job)


def _use_job_label(job: str) -> None:
  label = read_state(job).get("label")
  if label:
    os.environ["NEO_JAX_WORKER_LABEL"] = label


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest="action", required=True)
  sub.add_parser("setup")
  for name in ("start", "supervise", "status", "logs", "stop"):
    p = sub.add_parser(name)
    p.add_argument("--job", default="train")
    if name in ("start", "supervise"):
      p.add_argument("--workdir", required=True)
      p.add_argument("--log_sync_s", type=float, default=60.0)
      p.add_argument("rest", nargs=argparse.REMAINDER)
    if name == "start":
      p.add_argument("--env", action="append", default=[], help="K=V for the trainer")
    if name == "logs":
      p.add_argument("--lines", type=int, default=50)
    if name == "stop":
      p.add_argument("--timeout", type=float, default=300.0)
  a = ap.parse_args(argv)
  if a.action in ("status", "logs", "stop"):
    _use_job_label(a.job)
  if a.action == "setup":
    setup()
  elif a.action in ("start", "supervise"):
    rest = a.rest[1:] if a.rest[:1] == ["--"] else a.rest
    if a.action == "supervise":
      return supervise(a.job, a.workdir, rest, a.log_sync_s)
    start(a.job, a.workdir, a.env, rest, a.log_sync_s)
  elif a.action == "status":
    status(a.job)
  elif a.action == "logs":
    logs(a.job, a.lines)
  else:
    stop(a.job, a.timeout)
  return 0


if __name__ == "__main__":
  sys.exit(main())
