"""TPU VM launcher: ship the code, build the environment, run, watch and stop a job.

    # first run: copy the checkout, create the env (uv, Python 3.11, the tpu extra), start
    python launch/tpu_pod.py --tpu=my-v5p-256 --zone=us-east5-a --project=my-proj --setup \\
        --workdir=gs://bucket/neo_ov_9b_s3 -- \\
        --config neo_ov_9b:stage3 --config.mesh.fsdp=32 --config.mesh.tensor=4
    python launch/tpu_pod.py --tpu=my-v5p-256 --zone=us-east5-a --status   # or --logs, --stop

Several ``--tpu`` = one multislice job (slice i = the i-th ``--tpu``): each slice's
workers get ``MEGASCALE_COORDINATOR_ADDRESS`` (worker 0 of slice 0, read with ``gcloud
compute tpus tpu-vm describe``), ``MEGASCALE_NUM_SLICES``, ``MEGASCALE_SLICE_ID`` and
``MEGASCALE_PORT``; JAX's TPU cluster detection derives the process ids and the
``jax.distributed`` coordinator from them. Give ``--config.dcn_mesh.data=<slices>``.

Every step is one ``gcloud compute tpus tpu-vm {scp,ssh} TPU --worker=all`` per slice
(slices in parallel). ``--setup``: a tarball of the checkout (git's tracked and untracked,
not ignored files; never ``.git`` / ``.venv``) plus ``requirements-pod.txt`` (the runtime lock
file and the tpu extra, ``launch/pod_requirements.py``) is copied to every worker and unpacked into
``~/<remote_dir>`` (the files the previous ``--setup`` shipped, listed in
``.shipped_files``, are removed first; ``.venv`` and anything a job wrote stay), then
``launch/pod_worker.py setup`` builds the environment. The start runs ``pod_worker.py start`` on every worker
(stale TPU processes and the libtpu lock file cleared; the trainer detached, logs in
``~/neo_jax_jobs/<job>/train.log`` and ``<workdir>/logs/<job>/``). ``--status`` /
``--logs`` / ``--stop`` (SIGTERM: the job saves a checkpoint and exits) act on the job.
``--dry_run`` prints the commands.
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import pod_requirements  # noqa: E402  pylint: disable=g-import-not-at-top

MEGASCALE_PORT = 8080
SHIPPED = ".shipped_files"  # on a worker: the files the last --setup unpacked


def _where(a) -> list[str]:
  return [f"--zone={a.zone}"] + ([f"--project={a.project}"] if a.project else [])


def ssh(a, tpu: str, command: str) -> list[str]:
  """``gcloud ... ssh TPU --worker=all --command=COMMAND`` (argv)."""
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, "--worker=all"] + _where(a) + [
      "--strict-host-key-checking=no", f"--command={command}"]


def scp(a, tpu: str, local: str, remote: str) -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "scp", local, f"{tpu}:{remote}",
          "--worker=all"] + _where(a) + ["--strict-host-key-checking=no"]


def describe_coordinator(a) -> list[str]:
  """The internal IP of worker 0 of the first slice (``MEGASCALE_COORDINATOR_ADDRESS``)."""
  return ["gcloud", "compute", "tpus", "tpu-vm", "describe", a.tpu[0]] + _where(a) + [
      "--format=value(networkEndpoints[0].ipAddress)"]


def worker(a, action: str, *args: str) -> str:
  """The remote shell command running ``launch/pod_worker.py ACTION ARGS`` in the code dir."""
  return f"cd ~/{a.remote_dir} && " + shlex.join(["python3", "launch/pod_worker.py", action,
                                                  *args])


def megascale_env(num_slices: int, slice_id: int, coordinator: str) -> list[str]:
  """``K=V`` pairs of a multislice worker (none for one slice)."""
  if num_slices <= 1:
    return []
  return [f"MEGASCALE_COORDINATOR_ADDRESS={coordinator}", f"MEGASCALE_NUM_SLICES={num_slices}",
          f"MEGASCALE_SLICE_ID={slice_id}", f"MEGASCALE_PORT={MEGASCALE_PORT}"]


def commands(a, train_args: list[str], tarball: str = "neo_jax.tar.gz",
             coordinator: str = "COORDINATOR_IP") -> list[list[list[str]]]:
  """The gcloud argv lists of the action, as steps; each step's lists run in parallel
  (one per slice), the steps in order.

  Args:
    a: parsed flags (``parse_args``).
    train_args: arguments for ``neo_jax.train`` (after ``--``).
    tarball: the local code tarball (``make_tarball``), copied by ``--setup``.
    coordinator: internal IP of worker 0 of slice 0 (several slices only).
  """
  job = f"--job={a.job}"
  if a.status:
    return [[ssh(a, t, worker(a, "status", job)) for t in a.tpu]]
  if a.logs:
    return [[ssh(a, t, worker(a, "logs", job, f"--lines={a.lines}")) for t in a.tpu]]
  if a.stop:
    return [[ssh(a, t, worker(a, "stop", job, f"--timeout={a.stop_timeout}")) for t in a.tpu]]
  steps = []
  if a.setup:
    remote_tar = f"~/{a.remote_dir}.tar.gz"
    d = f"~/{a.remote_dir}"
    unpack = (f"mkdir -p {d} && cd {d} && {{ [ ! -f {SHIPPED} ] || xargs -d '\\n' rm -f "
              f"< {SHIPPED} || true; }} && tar -xzf {remote_tar} && tar -tzf {remote_tar} > {SHIPPED} "
              f"&& rm -f {remote_tar} && ")
    steps.append([scp(a, t, tarball, remote_tar) for t in a.tpu])
    steps.append([ssh(a, t, unpack + worker(a, "setup")) for t in a.tpu])
  n = len(a.tpu)
  starts = []
  for i, t in enumerate(a.tpu):
    env = megascale_env(n, i, coordinator) + list(a.env)
    args = [job, f"--workdir={a.workdir}", f"--log_sync_s={a.log_sync_s}"]
    args += [f"--env={kv}" for kv in env] + ["--"] + list(train_args)
    starts.append(ssh(a, t, worker(a, "start", *args)))
  steps.append(starts)
  return steps


def code_files(src: str) -> list[str]:
  """Relative paths of the checkout to ship: git's tracked + untracked-not-ignored files
  (a plain directory: every file), never ``.git``, ``.venv*`` or ``__pycache__``."""
  try:
    out = subprocess.run(["git", "-C", src, "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, check=True).stdout
    names = [n for n in out.decode().split("\0") if n]
  except (OSError, subprocess.CalledProcessError):
    names = [os.path.relpath(os.path.join(d, f), src)
             for d, _, fs in os.walk(src) for f in fs]
  keep = []
  for n in sorted(set(names)):
    parts = n.split(os.sep)
    if parts[0] == ".git" or parts[0].startswith(".venv") or "__pycache__" in parts:
      continue
    if os.path.isfile(os.path.join(src, n)):
      keep.append(n)
  return keep


def make_tarball(src: str, dest: str) -> list[str]:
  """Writes ``dest`` (.tar.gz): the checkout's files (``code_files``) and the generated
  ``requirements-pod.txt``. Returns the member names.

  Raises:
    FileNotFoundError: ``src`` has no ``launch/pod_worker.py`` (not a neo_jax checkout).
  """
  if not os.path.exists(os.path.join(src, "launch", "pod_worker.py")):
    raise FileNotFoundError(f"{src} is not a neo_jax checkout (no launch/pod_worker.py).")
  files = code_files(src)
  with open(os.path.join(src, "requirements-lock.txt")) as f, \
      open(os.path.join(src, "pyproject.toml")) as g:
    req = pod_requirements.pod_requirements(f.read(), g.read()).encode()
  with tarfile.open(dest, "w:gz") as tar:
    for n in files:
      tar.add(os.path.join(src, n), arcname=n, recursive=False)
    info = tarfile.TarInfo("requirements-pod.txt")
    info.size = len(req)
    tar.addfile(info, io.BytesIO(req))
  return files + ["requirements-pod.txt"]


def _pump(prefix: str, stream, sink) -> None:
  for line in iter(stream.readline, ""):
    sink.write(prefix + line)
    sink.flush()


def run_parallel(cmds: list[list[str]], labels: list[str]) -> int:
  """Runs the commands at once, output lines prefixed with the label; the largest status."""
  procs, pumps = [], []
  for cmd, label in zip(cmds, labels):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t = threading.Thread(target=_pump, args=(f"[{label}] " if len(cmds) > 1 else "",
                                             p.stdout, sys.stdout), daemon=True)
    t.start()
    procs.append(p)
    pumps.append(t)
  rcs = [p.wait() for p in procs]
  for t in pumps:
    t.join(timeout=5)
  return max(rcs)


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--tpu", action="append", required=True,
                  help="TPU VM name; repeat for a multislice job (slice i = i-th --tpu)")
  ap.add_argument("--zone", required=True)
  ap.add_argument("--project", default="")
  ap.add_argument("--workdir", default="", help="checkpoints, metrics, logs (gs:// on pods)")
  ap.add_argument("--job", default="train", help="job name on the workers")
  ap.add_argument("--src", default=os.path.dirname(HERE), help="checkout shipped by --setup")
  ap.add_argument("--remote_dir", default="neo_jax", help="code directory under ~ on the workers")
  ap.add_argument("--env", action="append", default=[], help="K=V for the trainer (repeat)")
  ap.add_argument("--log_sync_s", type=float, default=60.0,
                  help="seconds between copies of the worker logs to <workdir>/logs")
  ap.add_argument("--setup", action="store_true", help="ship the code and build the env first")
  act = ap.add_mutually_exclusive_group()
  act.add_argument("--status", action="store_true", help="state of the job on every worker")
  act.add_argument("--logs", action="store_true", help="last --lines of every worker's log")
  act.add_argument("--stop", action="store_true", help="SIGTERM (save and exit), then SIGKILL")
  ap.add_argument("--lines", type=int, default=50)
  ap.add_argument("--stop_timeout", type=float, default=300.0)
  ap.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
  ap.add_argument("train_args", nargs=argparse.REMAINDER, help="-- arguments of neo_jax.train")
  a = ap.parse_args(argv)
  a.train_args = a.train_args[1:] if a.train_args[:1] == ["--"] else a.train_args
  starting = not (a.status or a.logs or a.stop)
  if starting and not a.workdir:
    ap.error("--workdir is required to start a job")
  if not starting and (a.setup or a.train_args):
    ap.error("--status / --logs / --stop take no --setup and no training arguments")
  for kv in a.env:
    if "=" not in kv:
      ap.error(f"--env wants K=V, got {kv!r}")
  return a


def main(argv=None) -> int:
  a = parse_args(argv)
  starting = not (a.status or a.logs or a.stop)
  coordinator = "COORDINATOR_IP"
  if starting and len(a.tpu) > 1 and not any("dcn_mesh" in t for t in a.train_args):
    print(f"Note: {len(a.tpu)} slices; the config must set dcn_mesh to multiply to "
          f"{len(a.tpu)} (e.g. --config.dcn_mesh.data={len(a.tpu)}).", file=sys.stderr)
  if starting and len(a.tpu) > 1:
    print(shlex.join(describe_coordinator(a)), flush=True)
    if not a.dry_run:
      r = subprocess.run(describe_coordinator(a), capture_output=True, text=True)
      coordinator = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
      if r.returncode or not coordinator:
        print(f"Could not read the IP of worker 0 of {a.tpu[0]}: {r.stderr}", file=sys.stderr)
        return r.returncode or 1
  with tempfile.TemporaryDirectory() as tmp:
    tarball = os.path.join(tmp, f"{a.remote_dir}.tar.gz")
    if a.setup and not a.dry_run:
      n = len(make_tarball(a.src, tarball))
      print(f"Shipping {n} files of {a.src} ({os.path.getsize(tarball) / 1e6:.1f} MB).", flush=True)
    for step in commands(a, a.train_args, tarball=tarball, coordinator=coordinator):
      for cmd in step:
        print(shlex.join(cmd), flush=True)
      if not a.dry_run:
        rc = run_parallel(step, a.tpu)
        if rc:
          return rc
  return 0


if __name__ == "__main__":
  sys.exit(main())
