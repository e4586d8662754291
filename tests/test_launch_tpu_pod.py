"""``launch/tpu_pod.py`` end to end against a gcloud stand-in (``testlib/fake_gcloud.py``).

TPU VM workers are home directories on this machine; ``gcloud ... scp/ssh --worker=all``
copies into / runs in each of them, so the launcher's own commands ship the code, build
the environment, start the detached job, show its status and logs and stop it. Stood in:
the machines and ssh (local processes), ``uv`` (``testlib/fake_uv.py``: the venv wraps
this interpreter, nothing is downloaded), the TPU metadata (each worker gets an explicit
``JAX_COORDINATOR_ADDRESS`` / ``JAX_PROCESS_COUNT`` / ``JAX_PROCESS_ID``) and the TPU (JAX
on 2 CPU devices per worker, gloo over loopback).
"""

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import time

import pytest

from testlib import fake_gcloud, fake_uv
from testlib import train as train_testlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "launch"))
import pod_worker  # noqa: E402  pylint: disable=g-import-not-at-top
import tpu_pod  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.fixture
def pod(tmp_path):
  """``run(*flags)``: the launcher with the stand-ins on the PATH; ``tpus``: name -> workers."""
  bin_dir = str(tmp_path / "bin")
  fake_gcloud.install(bin_dir)
  fake_uv.install(bin_dir)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  env.update(PATH=bin_dir + os.pathsep + os.environ["PATH"],
             FAKE_GCLOUD_ROOT=str(tmp_path / "pods"), FAKE_GCLOUD_LOG=str(tmp_path / "gcloud.log"),
             FAKE_UV_LOG=str(tmp_path / "uv.log"), FAKE_GCLOUD_COORDINATOR=f"127.0.0.1:{port}",
             FAKE_GCLOUD_WORKER_ENV=json.dumps({
                 "JAX_PLATFORMS": "cpu", "NEO_JAX_LOOPBACK_ONLY": "1",
                 "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}))

  class Pod:
    root = tmp_path
    coordinator = env["FAKE_GCLOUD_COORDINATOR"]

    def __init__(self):
      self.tpus = {}

    def home(self, tpu, i):
      return os.path.join(env["FAKE_GCLOUD_ROOT"], tpu, f"worker{i}")

    def run(self, *flags, check=True):
      e = dict(env, FAKE_GCLOUD_TPUS=json.dumps(self.tpus))
      r = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "tpu_pod.py"),
                          "--zone=us-east5-a", "--project=p"] + [f"--tpu={t}" for t in self.tpus]
                         + list(flags), env=e, cwd=str(tmp_path), capture_output=True, text=True,
                         timeout=300)
      if check:
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
      return r

  p = Pod()
  yield p
  # Whatever still runs (a failed test) is stopped by the launcher itself.
  if p.tpus:
    for job in ("t", "ms"):
      p.run(f"--job={job}", "--stop", "--stop_timeout=20", check=False)


def _wait(cond, timeout, what):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if cond():
      return
    time.sleep(1)
  raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_two_workers_setup_train_status_logs_stop(pod):
  """One slice of 2 workers: ship, env, start detached, train together, watch, stop (save)."""
  pod.tpus = {"pod": 2}
  workdir = str(pod.root / "workdir")
  for i in range(2):  # a stale libtpu lock file on each worker
    os.makedirs(pod.home("pod", i), exist_ok=True)
    open(os.path.join(pod.home("pod", i), "libtpu_lockfile"), "w").close()
  # Worker 0 has code of an earlier --setup (old.py) and a file a job wrote (runs/keep.txt).
  old = os.path.join(pod.home("pod", 0), "neo_jax")
  os.makedirs(os.path.join(old, "runs"))
  for rel in ("old.py", "runs/keep.txt"):
    open(os.path.join(old, rel), "w").close()
  with open(os.path.join(old, ".shipped_files"), "w") as f:
    f.write("old.py\n")
  r = pod.run("--setup", f"--workdir={workdir}", "--job=t", "--log_sync_s=2", "--",
              "--config", "configs/smoke.py:steps=100000", "--config.checkpoint.every_steps=100000")
  for i in range(2):
    home = pod.home("pod", i)
    code = os.path.join(home, "neo_jax")
    assert os.path.exists(os.path.join(code, "launch", "pod_worker.py"))
    assert not os.path.exists(os.path.join(home, "neo_jax.tar.gz"))   # unpacked, removed
    assert not os.path.exists(os.path.join(code, ".git"))
    with open(os.path.join(code, ".shipped_files")) as f:
      assert "launch/pod_worker.py" in f.read().split("\n")
    with open(os.path.join(code, "requirements-pod.txt")) as f:
      assert "jax==0.10.2" in f.read().split("\n")
    # The env check ran the worker's own copy of the package.
    assert f"neo_jax from {code}/neo_jax/__init__.py" in r.stdout
    assert not os.path.exists(os.path.join(home, "libtpu_lockfile"))  # cleared before start
  assert not os.path.exists(os.path.join(old, "old.py"))
  assert os.path.exists(os.path.join(old, "runs", "keep.txt"))
  uv = [json.loads(l)["argv"] for l in open(pod.root / "uv.log")]
  for i in range(2):
    code = os.path.join(pod.home("pod", i), "neo_jax")
    assert ["venv", "--python", "3.11", f"{code}/.venv"] in uv
    assert ["pip", "install", "--python", f"{code}/.venv/bin/python", "-r",
            f"{code}/requirements-pod.txt", "-e", ".[tpu]"] in uv
  assert "started job 't'" in r.stdout

  # The two workers train together: process 0 writes the metrics of the global steps.
  metrics = os.path.join(workdir, "metrics.jsonl")
  _wait(lambda: os.path.exists(metrics) and len(train_testlib.logged_losses(workdir)) >= 3, 400,
        "3 training steps")
  status = pod.run("--job=t", "--status").stdout
  assert status.count("job 't': running") == 2, status
  again = pod.run(f"--workdir={workdir}", "--job=t", "--", "--config", "configs/smoke.py",
                  check=False)
  assert again.returncode != 0 and "is running; stop it first" in again.stdout + again.stderr
  logs = pod.run("--job=t", "--logs", "--lines=200").stdout
  assert "== process0:" in logs and "== process1:" in logs and "[train] step" in logs

  stop = pod.run("--job=t", "--stop", "--stop_timeout=120").stdout
  assert stop.count("job 't': exited with status 0") == 2, stop
  # SIGTERM = the preemption path: every process saved the same step, then exited 0.
  ckpts = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  losses = train_testlib.logged_losses(workdir)
  assert ckpts and ckpts[-1] == max(losses) and sorted(losses) == list(range(1, ckpts[-1] + 1))
  for i in range(2):
    with open(os.path.join(workdir, "logs", "t", f"process{i}.log")) as f:
      copied = f.read()
    assert f"Preemption: saved step {ckpts[-1]}" in copied and "exited with status 0" in copied
  status = pod.run("--job=t", "--status").stdout
  assert status.count("job 't': exited with status 0") == 2


def test_two_slices_get_megascale_variables(pod):
  """Two TPUs = a multislice job: worker 0 of slice 0 is the coordinator (gcloud describe),
  each slice's workers get its MEGASCALE_SLICE_ID."""
  pod.tpus = {"slice-a": 1, "slice-b": 1}
  workdir = str(pod.root / "workdir")
  r = pod.run("--setup", f"--workdir={workdir}", "--job=ms", "--env=FOO=bar", "--", "--helpshort")
  assert shlex.split(r.stdout.splitlines()[0])[:6] == [
      "gcloud", "compute", "tpus", "tpu-vm", "describe", "slice-a"]
  for i, tpu in enumerate(pod.tpus):
    state_path = os.path.join(pod.home(tpu, 0), "neo_jax_jobs", "ms", "state.json")
    _wait(lambda: "rc" in json.load(open(state_path)), 120, "the job to end")  # pylint: disable=cell-var-from-loop
    with open(state_path) as f:
      state = json.load(f)
    assert {k: v for k, v in state["env"].items() if k != "NEO_JAX_WORKER_LABEL"} == {
        "MEGASCALE_COORDINATOR_ADDRESS": "127.0.0.1", "MEGASCALE_NUM_SLICES": "2",
        "MEGASCALE_SLICE_ID": str(i), "MEGASCALE_PORT": "8080", "FOO": "bar"}
    assert state["argv"][1:] == [
        "-m", "neo_jax.train", "--distributed", f"--workdir={workdir}",
        f"--coordinator_address={pod.coordinator}", "--num_processes=2", f"--process_id={i}",
        "--helpshort"]
    # absl's --helpshort exits 1: the trainer ran with these flags; its output was copied.
    assert state["rc"] == 1
    with open(os.path.join(workdir, "logs", "ms", f"process{i}.log")) as f:
      assert "--workdir" in f.read()


def test_clear_stale_tpu_kills_the_holders_and_removes_the_lock(tmp_path):
  device = tmp_path / "accel0"
  device.write_text("")
  lock = tmp_path / "libtpu_lockfile"
  lock.write_text("")
  holder = subprocess.Popen([sys.executable, "-c", f"f = open({str(device)!r}); import time; "
                             "print('open', flush=True); time.sleep(600)"], stdout=subprocess.PIPE)
  try:
    assert holder.stdout.readline().strip() == b"open"
    assert pod_worker.device_holders([str(tmp_path / "accel*")]) == {holder.pid: str(device)}
    killed = pod_worker.clear_stale_tpu([str(tmp_path / "accel*")], lockfile=str(lock))
    assert killed == [holder.pid]
    assert holder.wait(timeout=30) == -9 and not lock.exists()
    assert pod_worker.clear_stale_tpu([str(tmp_path / "accel*")], lockfile=str(lock)) == []
  finally:
    if holder.poll() is None:
      holder.kill()


def test_tarball_has_the_code_and_pod_requirements_only(tmp_path):
  src = tmp_path / "src"
  for rel in ("launch/pod_worker.py", "neo_jax/__init__.py", ".venv/bin/python", ".git/HEAD",
              "neo_jax/__pycache__/x.pyc", ".venv-ci/x"):
    (src / rel).parent.mkdir(parents=True, exist_ok=True)
    (src / rel).write_text("x")
  shutil.copy(os.path.join(ROOT, "requirements-lock.txt"), src)
  shutil.copy(os.path.join(ROOT, "pyproject.toml"), src)
  names = tpu_pod.make_tarball(str(src), str(tmp_path / "c.tar.gz"))
  with tarfile.open(tmp_path / "c.tar.gz") as tar:
    assert sorted(tar.getnames()) == sorted(names) == sorted([
        "launch/pod_worker.py", "neo_jax/__init__.py", "pyproject.toml", "requirements-lock.txt",
        "requirements-pod.txt"])
    req = tar.extractfile("requirements-pod.txt").read().decode().splitlines()
  assert not [l for l in req if l.startswith(("torch", "transformers"))]
  # A git checkout (this one): the tracked files travel, ignored ones (.venv*) never.
  files = tpu_pod.code_files(ROOT)
  tracked = subprocess.run(["git", "-C", ROOT, "ls-files"], capture_output=True, text=True,
                           check=True).stdout.split()
  assert {f for f in tracked if os.path.exists(os.path.join(ROOT, f))} <= set(files)
  assert not [f for f in files if f.startswith((".venv", ".git/")) or "__pycache__" in f]


@pytest.mark.skipif(shutil.which("gcloud") is None or os.path.realpath(
    shutil.which("gcloud")).startswith(ROOT), reason="needs the real gcloud CLI")
def test_real_gcloud_parses_every_command(tmp_path):
  """gcloud's own parser accepts every command line: with no account configured it stops at
  "no active account" (after parsing, before any request); a bad flag would exit 2."""
  a = tpu_pod.parse_args(["--tpu=s0", "--tpu=s1", "--zone=us-east5-a", "--project=p",
                          "--workdir=gs://b/r", "--setup", "--env=A=1", "--", "--config", "x.py"])
  cmds = [c for step in tpu_pod.commands(a, a.train_args, "/tmp/c.tar.gz", "10.0.0.2")
          for c in step] + [tpu_pod.describe_coordinator(a)]
  for flag in ("--status", "--logs", "--stop"):
    b = tpu_pod.parse_args(["--tpu=s0", "--zone=us-east5-a", flag])
    cmds += tpu_pod.commands(b, [])[0]
  env = dict(os.environ, CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), CLOUDSDK_CORE_DISABLE_PROMPTS="1",
             CLOUDSDK_CORE_CHECK_GCE_METADATA="false",  # no probe of the metadata server
             CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="1",
             CLOUDSDK_CORE_DISABLE_USAGE_REPORTING="1")
  bad = subprocess.run(cmds[0] + ["--no-such-flag"], env=env, capture_output=True, text=True,
                       timeout=60)
  assert bad.returncode == 2 and "unrecognized arguments" in bad.stderr
  for cmd in cmds:
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "do not currently have an active account" in r.stderr, (
        cmd, r.stderr)
