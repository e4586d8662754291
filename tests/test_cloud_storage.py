"""Everything a pod user keeps in a bucket, against a real GCS-compatible server on
loopback (fake-gcs-server, ``testlib/gcs.py``): a training run whose work directory is
``gs://...`` (checkpoints, metrics, config, TensorBoard events all objects, nothing on
the local disk), resumed from the bucket after SIGKILL; conversion bucket to bucket; a
JSON source whose annotations and images are objects. No connection leaves loopback."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest

from neo_jax.configs import smoke
from neo_jax.core import paths
from neo_jax.train import trainer
from testlib.train import logged_losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 14


def test_non_loopback_connections_are_refused():
  with pytest.raises(ConnectionRefusedError, match="NEO_JAX_LOOPBACK_ONLY"):
    socket.create_connection(("169.254.169.254", 80), timeout=1)   # GCE metadata server
  with socket.socket() as s:     # loopback stays open
    s.bind(("127.0.0.1", 0))


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
              XLA_FLAGS="--xla_force_host_platform_device_count=1")


def _train_cmd(workdir):
  return [sys.executable, "-m", "neo_jax.train", f"--config=smoke:steps={STEPS}",
          f"--workdir={workdir}", "--config.checkpoint.every_steps=4",
          "--config.tensorboard=true"]


def test_training_lives_in_the_bucket_and_resumes_from_it(gcs_emulator, tmp_path):
  bucket = gcs_emulator.create_bucket("pod-run")
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  full, killed = f"{bucket}/full", f"{bucket}/killed"
  subprocess.run(_train_cmd(full), env=_env(), cwd=cwd, check=True, capture_output=True)
  names = gcs_emulator.list_objects("pod-run", "full/")
  for want in ("full/config.json", "full/metrics.jsonl", f"full/checkpoints/{STEPS}/"):
    assert any(n.startswith(want) for n in names), (want, names[:20])
  assert any(n.startswith("full/tb/events.out.tfevents") for n in names), names[:20]
  assert sorted(logged_losses(full)) == list(range(1, STEPS + 1))

  proc = subprocess.Popen(_train_cmd(killed), env=_env(), cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  marker = "killed/checkpoints/8/commit_success.txt"
  while proc.poll() is None and time.time() < deadline:
    if marker in gcs_emulator.list_objects("pod-run", "killed/checkpoints/8/"):
      break
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert marker in gcs_emulator.list_objects("pod-run", "killed/"), "no step-8 checkpoint"
  r = subprocess.run(_train_cmd(killed), env=_env(), cwd=cwd, check=True, capture_output=True,
                     text=True)
  resumed = int(r.stdout.split("Resumed from checkpoint step")[1].split()[0])
  assert 8 <= resumed < STEPS
  ref, got = logged_losses(full), logged_losses(killed)
  for step in range(resumed + 1, STEPS + 1):
    assert got[step] == ref[step], (step, got[step], ref[step])
  assert not any(cwd.iterdir()), f"files written under the current directory: {list(cwd.iterdir())}"


def test_convert_reads_and_writes_the_bucket(gcs_emulator):
  from neo_jax.convert import convert as cv, orbax_io  # pylint: disable=import-outside-toplevel
  bucket = gcs_emulator.create_bucket("weights")
  cli = [sys.executable, "-m", "neo_jax.convert"]
  subprocess.run(cli + ["random", "--preset=tiny", f"--dst={bucket}/params", "--seed=3",
                        "--noprogress"], env=_env(), check=True, capture_output=True)
  subprocess.run(cli + ["export", f"--src={bucket}/params", f"--dst={bucket}/hf",
                        "--dtype=float32", "--noprogress"], env=_env(), check=True,
                 capture_output=True)
  names = gcs_emulator.list_objects("weights", "hf/")
  assert "hf/config.json" in names and any(n.endswith(".safetensors") for n in names), names
  cfg = orbax_io.load_config(f"{bucket}/params")
  want = cv.TreeSource(orbax_io.load_params(f"{bucket}/params"))
  with paths.local_input(f"{bucket}/hf") as local:
    got = cv.TreeSource(cv.collect(cv.release_leaves(local, cfg)))
  for path in want.paths():
    np.testing.assert_array_equal(got.get(path), want.get(path), err_msg="/".join(path))


@pytest.mark.slow  # over a minute on 2 cores: `bash scripts/test.sh -m slow`
def test_json_source_in_the_bucket_trains(gcs_emulator):
  bucket = gcs_emulator.create_bucket("data")
  rng = np.random.default_rng(0)
  lines = []
  for i in range(6):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(buf, format="PNG")
    paths.resolve(f"{bucket}/images/{i}.png").write_bytes(buf.getvalue())
    lines.append(json.dumps({"image": f"images/{i}.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour dominates?"},
        {"from": "gpt", "value": f"colour {i}"}]}))
  paths.resolve(f"{bucket}/train.jsonl").write_text("\n".join(lines) + "\n")
  c = smoke.get_config("steps=2,seq_len=256,batch_size=8")
  c.model.vocab_size = 151936          # the real tokenizer's ids
  c.model.img_context_token_id, c.model.img_start_token_id, c.model.img_end_token_id = (
      151669, 151670, 151671)
  c.data = smoke.common.embedded_data_config()
  c.data.sources = {"bucket": {"kind": "json", "path": f"{bucket}/train.jsonl", "weight": 1.0,
                               "data_root": "", "options": {"max_pixels": 16384}}}
  c.data.strict = True                 # a missing image would raise, not skip
  out = trainer.run(c, f"{bucket}/json-run")
  assert out["step"] == 2 and out["train"]["visual_tokens"] > 0
  assert not any(k.startswith("skipped/") and v for k, v in out["train"].items())
  # The run's weights, read back from the bucket as inference reads a work directory
  # (core/run_layout.py, leaf by leaf), equal what Orbax itself restores; the run's
  # processing is there.
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from neo_jax.infer import checkpoints  # pylint: disable=import-outside-toplevel
  cfg, params, _, desc = checkpoints.load(f"{bucket}/json-run")
  assert desc.endswith("step 2") and cfg.vocab_size == 151936
  mgr = ocp.CheckpointManager(paths.resolve(f"{bucket}/json-run/checkpoints"),
                              item_names=("state", "data"))
  want = mgr.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  want = want["params"]
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(want)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert paths.exists(f"{bucket}/json-run/processing.json")
