"""Issue 26, items 1, 2 and 5: an object store that fails, against fake-gcs-server behind
the fault-injecting proxy (``testlib/faulty_proxy.py``, all on loopback).

* The proxy itself: each kind of fault, on the requests its rule matches only.
* (slow) A training run whose checkpoint uploads get 503 (with ``Retry-After``), 429, connection
  resets, truncated answers, and whose ``metrics.jsonl`` upload is refused once, finishes
  (the clients' own retries: tensorstore for Orbax's arrays, gcsfs for the rest); killed
  while its last checkpoint upload stalls, the half-written step is not restored: the
  rerun resumes from the step before, reading through truncated answers, with the
  uninterrupted run's losses bit for bit, and ``metrics.jsonl`` holds every step.
* ``MetricWriter`` loses no line when the store refuses writes (in process).
* Preflight: a missing bucket ends both processes of a 2-process launch within seconds
  with the same line and status 2; a wrong endpoint and refused credentials are named.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from neo_jax.core import paths
from neo_jax.launch import local
from testlib.faulty_proxy import Fault
from testlib.train import ROOT, logged_losses


def _env(**extra):
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
              XLA_FLAGS="--xla_force_host_platform_device_count=1", **extra)


def _train(workdir, steps=12):
  return [sys.executable, "-m", "neo_jax.train", f"--config=smoke:steps={steps}",
          f"--workdir={workdir}", "--config.checkpoint.every_steps=4",
          "--config.tensorboard=true"]


def test_fault_proxy_injects_each_fault_on_matching_requests(faulty_gcs):
  faulty_gcs.emulator.create_bucket("proxy-check")
  url = f"{faulty_gcs.url}/storage/v1/b/proxy-check/o"
  faulty_gcs.add(Fault("status", path="proxy-check/o$", status=429, retry_after=3, times=1))
  with pytest.raises(urllib.error.HTTPError) as e:
    urllib.request.urlopen(url, timeout=10)
  assert e.value.code == 429 and e.value.headers["Retry-After"] == "3"
  assert json.loads(urllib.request.urlopen(url, timeout=10).read())["kind"] == "storage#objects"
  faulty_gcs.add(Fault("reset", path="proxy-check/o$", times=1))
  with pytest.raises((ConnectionError, http.client.RemoteDisconnected, urllib.error.URLError)):
    urllib.request.urlopen(url, timeout=10).read()
  faulty_gcs.add(Fault("truncate", path="proxy-check/o$", times=1))
  with pytest.raises(http.client.IncompleteRead):
    urllib.request.urlopen(url, timeout=10).read()
  faulty_gcs.add(Fault("stall", path="proxy-check/o$", stall_s=1.0, times=1))
  t0 = time.monotonic()
  urllib.request.urlopen(url, timeout=10).read()
  assert time.monotonic() - t0 >= 1.0
  urllib.request.urlopen(f"{faulty_gcs.url}/storage/v1/b/proxy-check", timeout=10).read()
  assert [f.hits for f in faulty_gcs.faults] == [1, 1, 1, 1]


def test_fault_metric_writer_keeps_every_line_when_writes_fail(faulty_gcs):
  from neo_jax.train.metric_writer import MetricWriter  # pylint: disable=import-outside-toplevel
  bucket = faulty_gcs.emulator.create_bucket("metrics-faults")
  refuse = Fault("status", path=r"m/metrics\.jsonl", method="POST", status=403, times=2)
  refuse_tb = Fault("status", path=r"m/tb/events", method="POST", status=403, times=2)
  faulty_gcs.add(refuse, refuse_tb)
  w = MetricWriter(f"{bucket}/m", enabled=True, flush_every_s=0.0)
  for step in range(1, 6):
    w.write(step, {"loss": 1.0 / step})
  w.flush()
  w.close()
  assert refuse.hits == 2 and refuse_tb.hits >= 1
  rows = [json.loads(l) for l in paths.read_text(f"{bucket}/m/metrics.jsonl").splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
  tb = [n for n in faulty_gcs.emulator.list_objects("metrics-faults", "m/tb/")]
  assert tb and paths.read_bytes(f"{bucket}/{tb[0]}")


def _commit_markers(emulator, bucket, prefix):
  return {n for n in emulator.list_objects(bucket, prefix) if n.endswith("commit_success.txt")}


@pytest.mark.slow
def test_fault_transient_store_errors_during_saves_and_a_half_written_checkpoint(faulty_gcs,
                                                                                 tmp_path):
  emu = faulty_gcs.emulator
  bucket = emu.create_bucket("flaky")
  full, cut = f"{bucket}/full", f"{bucket}/cut"
  cwd = str(tmp_path)
  ref_run = subprocess.Popen(_train(full), env=_env(), cwd=cwd, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  faults = [
      Fault("status", path=r"uploadType=media&name=cut/checkpoints/4/state/", status=503,
            retry_after=1, times=3, every=2),
      Fault("status", path=r"cut/checkpoints/4/data/process_0", status=429, retry_after=1,
            times=2),
      Fault("reset", path=r"cut/checkpoints/8/", method="POST", times=3, every=3),
      Fault("truncate", path=r"cut/checkpoints/\d+/", method="GET", times=3, every=4),
      Fault("status", path=r"cut/metrics\.jsonl", status=503, times=1),
  ]
  stall = Fault("stall", path=r"uploadType=media&name=cut/checkpoints/12/state/", stall_s=300,
                then="reset", times=1)
  faulty_gcs.add(*faults, stall)
  p = subprocess.Popen(_train(cut), env=_env(), cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 400
  while not stall.hits and p.poll() is None and time.time() < deadline:
    time.sleep(0.1)
  time.sleep(1.0)                      # more of step 12's objects land, none commits
  p.kill()
  out = p.communicate()[0]
  assert stall.hits == 1, out[-3000:]
  assert all(f.hits for f in faults), [(f.kind, f.path, f.hits) for f in faults]
  assert emu.list_objects("flaky", "cut/checkpoints/12/"), "nothing of step 12 was written"
  assert not _commit_markers(emu, "flaky", "cut/checkpoints/12/"), "step 12 committed"
  assert ref_run.wait(timeout=400) == 0

  faulty_gcs.clear()
  reads = Fault("truncate", path=r"cut/checkpoints/8/state/.*alt=media", method="GET",
                times=2, every=2)
  faulty_gcs.add(reads)
  r = subprocess.run(_train(cut), env=_env(), cwd=cwd, capture_output=True, text=True,
                     timeout=400)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert "Resumed from checkpoint step 8" in r.stdout, r.stdout[-3000:]
  assert reads.hits == 2
  ref, got = logged_losses(full), logged_losses(cut)
  assert sorted(got) == list(range(1, 13))
  for step in range(9, 13):
    assert got[step] == ref[step], (step, got[step], ref[step])
  assert _commit_markers(emu, "flaky", "cut/checkpoints/12/")


def test_preflight_missing_bucket_ends_both_processes_at_once(gcs_emulator, tmp_path):
  cmd = _train("gs://no-such-bucket/run")
  port = local.free_port()
  procs = [subprocess.Popen(argv, env={**os.environ, **env, "PYTHONPATH": ROOT}, cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for env, argv in local.process_commands(cmd, 2, 1, port)]
  t0 = time.monotonic()
  outs = [p.communicate(timeout=120)[0] for p in procs]
  took = time.monotonic() - t0
  assert [p.returncode for p in procs] == [2, 2], outs
  lines = [[l for l in o.splitlines() if l.startswith("Preflight:")] for o in outs]
  assert lines[0] and lines[0] == lines[1], outs
  assert "the bucket gs://no-such-bucket does not exist" in lines[0][0]
  assert took < 60, took


def test_preflight_names_a_wrong_endpoint_and_refused_credentials(faulty_gcs, tmp_path):
  faulty_gcs.emulator.create_bucket("creds")
  faulty_gcs.add(Fault("status", path=r"creds/o\?.*name=run/\.neo_jax_preflight", status=401,
                       times=-1))
  wrong = subprocess.Popen(_train("gs://creds/run"), env=_env(
      STORAGE_EMULATOR_HOST="http://127.0.0.1:9"), cwd=str(tmp_path), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
  creds = subprocess.Popen(_train("gs://creds/run"), env=_env(), cwd=str(tmp_path),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  out_wrong, out_creds = wrong.communicate(timeout=120)[0], creds.communicate(timeout=120)[0]
  assert wrong.returncode == 2 and creds.returncode == 2, (out_wrong, out_creds)
  assert "Preflight: cannot connect to the object store at http://127.0.0.1:9 (gcsfs)" \
      in out_wrong, out_wrong
  assert "Preflight: no valid credentials for gs://creds/run" in out_creds, out_creds
  assert not any(n for n in faulty_gcs.emulator.list_objects("creds") if "checkpoints" in n)
