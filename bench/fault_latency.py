"""How long each fault of issue 26 takes to end (or not end) a run: the latencies in
BUILD_NOTES.md section 0h.

    python bench/fault_latency.py                 # every scenario, a Markdown table
    python bench/fault_latency.py --only=dead_peer,preflight

Each scenario starts real trainer processes (the ``smoke`` config, 2 processes x 2 CPU
devices over gloo, as ``launch/local.py`` does) and, where a bucket is involved,
fake-gcs-server behind the fault-injecting proxy of ``tests/testlib``, all on loopback.
The clock starts at the fault (the ``kill -9``, the SIGTERM, the process start) and stops
when the last process that must end has ended. These are fault latencies (timeouts,
heartbeats, retries with backoff), not step times; on a loaded machine they grow by the
time the processes wait for a CPU.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from testlib import gcs  # noqa: E402  pylint: disable=wrong-import-position
from testlib.faulty_proxy import Fault, FaultyProxy  # noqa: E402  pylint: disable=wrong-import-position
from testlib.procs import Launch  # noqa: E402  pylint: disable=wrong-import-position


def _cmd(workdir, *extra, steps=400, every=5):
  return [sys.executable, "-m", "neo_jax.train", f"--config=smoke:steps={steps}",
          f"--workdir={workdir}", f"--config.checkpoint.every_steps={every}", *extra]


def _last(text: str, pattern: str) -> str:
  hits = [l for l in text.splitlines() if re.search(pattern, l)]
  return hits[-1] if hits else "(no such line)"


def dead_peer(tmp):
  rows = []
  for victim in (1, 0):
    run = Launch(_cmd(f"{tmp}/dead{victim}"))
    run.wait_for(0, "[train] step 7 ")
    t0 = time.monotonic()
    run.procs[victim].kill()
    survivor = run.procs[1 - victim]
    survivor.wait(timeout=300)
    took = time.monotonic() - t0
    run.wait(30)
    line = _last(run.text(1 - victim), r"^Process \d is gone|Terminating process")
    rows.append((f"kill -9 of process {victim} at step 7", f"process {1 - victim} exits "
                 f"{survivor.returncode}", took, line))
  return rows


def sigterm(tmp):
  run = Launch(_cmd(f"{tmp}/term"))
  run.wait_for(0, "[train] step 7 ")
  t0 = time.monotonic()
  run.procs[1].send_signal(signal.SIGTERM)
  codes = run.wait(300)
  return [("SIGTERM to process 1 at step 7", f"both exit {codes}", time.monotonic() - t0,
           _last(run.text(0), "Preemption notice"))]


def stuck_peer(tmp):
  run = Launch(_cmd(f"{tmp}/stuck"))
  run.wait_for(0, "[train] step 7 ")
  run.procs[1].send_signal(signal.SIGSTOP)
  time.sleep(1.0)
  t0 = time.monotonic()
  run.procs[0].send_signal(signal.SIGTERM)
  run.procs[0].wait(timeout=300)
  took = time.monotonic() - t0
  run.procs[1].send_signal(signal.SIGKILL)
  run.wait(30)
  return [("SIGTERM to process 0 while process 1 is stopped (SIGSTOP)",
           f"process 0 exits {run.procs[0].returncode}", took,
           _last(run.text(0), "Preemption notice|^Process"))]


def preflight(tmp):
  emu = gcs.Emulator()
  os.environ.update(emu.env)
  rows = []
  try:
    t0 = time.monotonic()
    run = Launch(_cmd("gs://no-such-bucket/run"), devices=1)
    codes = run.wait(120)
    rows.append(("--workdir=gs://no-such-bucket/run, 2 processes", f"both exit {codes}",
                 time.monotonic() - t0, _last(run.text(1), "^Preflight")))
    emu.create_bucket("bench")
    t0 = time.monotonic()
    r = subprocess.run(_cmd("gs://bench/run"), env={**os.environ, "PYTHONPATH": ROOT,
                                                    "STORAGE_EMULATOR_HOST": "127.0.0.1:9"},
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    rows.append(("STORAGE_EMULATOR_HOST=127.0.0.1:9 (nothing listens)", f"exit {r.returncode}",
                 time.monotonic() - t0, _last(r.stdout, "^Preflight")))
  finally:
    emu.stop()
  return rows


def store_faults(tmp):
  """A (blocking) checkpoint save with every 2nd array upload answered 503 vs one without."""
  del tmp
  emu = gcs.Emulator()
  os.environ.update(emu.env)
  proxy = FaultyProxy(emu.url)
  os.environ.update(proxy.env)
  bucket = emu.create_bucket("bench")
  rows = []
  try:
    for name, faults in (("clean", []), ("flaky", [Fault(
        "status", path=r"uploadType=media&name=flaky/checkpoints/4/", status=503, times=-1,
        every=2)])):
      proxy.clear()
      proxy.add(*faults)
      env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS":
             "--xla_force_host_platform_device_count=1"}
      r = subprocess.run(_cmd(f"{bucket}/{name}", "--config.checkpoint.async_save=false",
                              steps=6, every=4), env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
      step5 = _last(r.stdout, r"^\[train\] step 5 ")
      m = re.search(r"time/checkpoint_s=([0-9.e+-]+)", step5)
      assert r.returncode == 0 and m, r.stdout[-2000:] + r.stderr[-2000:]
      ckpt = float(m.group(1))
      hits = sum(f.hits for f in faults)
      rows.append((f"blocking step-4 save to gs://, {hits} array uploads answered 503",
                   f"exit {r.returncode}", ckpt, "time/checkpoint_s of step 5's log line"))
  finally:
    proxy.stop()
    emu.stop()
  return rows


SCENARIOS = {"dead_peer": dead_peer, "sigterm": sigterm, "stuck_peer": stuck_peer,
             "preflight": preflight, "store_faults": store_faults}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--only", default=",".join(SCENARIOS))
  ap.add_argument("--tmp", default="/tmp/neo_fault_latency")
  a = ap.parse_args()
  os.makedirs(a.tmp, exist_ok=True)
  print("| fault | outcome | seconds | line |\n|---|---|---|---|")
  for name in a.only.split(","):
    for fault, outcome, seconds, line in SCENARIOS[name](os.path.join(a.tmp, str(time.time_ns()))):
      print(f"| {fault} | {outcome} | {seconds:.1f} | `{line[:160]}` |", flush=True)


if __name__ == "__main__":
  main()
