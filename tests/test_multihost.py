"""Multi-host training on one machine: 2 processes x 2 fake CPU devices (gloo over
loopback) against a single-process 4-device run, then resume on 1 process."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from neo_jax.configs import smoke
from neo_jax.data import random_batches
from testlib import train as train_testlib
from neo_jax.ops import attention as attention_lib
from neo_jax.train import checkpointing, sharding, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 20


def _train_cmd(workdir, steps):
  return train_testlib.train_cmd(workdir, steps, every=10)


_losses = train_testlib.logged_losses


def _global_batches(config, num_processes, n):
  """The global batches the processes build: process i's local rows, in order."""
  m = config.model
  its = [random_batches.make_random_iterator(
      batch_size=config.batch_size // num_processes, seq_len=config.seq_len,
      vocab_size=m.vocab_size, img_start_id=m.img_start_token_id,
      img_context_id=m.img_context_token_id, img_end_id=m.img_end_token_id,
      seed=config.train.seed, process_index=i) for i in range(num_processes)]
  out = []
  for _ in range(n):
    parts = [next(it) for it in its]
    out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
  return out


def test_two_processes_match_one_process_and_resume_on_one(tmp_path):
  workdir = str(tmp_path / "mh")
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  launch = [sys.executable, f"{ROOT}/launch/local.py", "--num_processes=2",
            "--devices_per_process=2", "--"] + _train_cmd(workdir, STEPS)
  r = subprocess.run(launch, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  mh = _losses(workdir)
  assert sorted(mh) == list(range(1, STEPS + 1))
  # Only process 0 writes metrics: one train record per step (and one run record).
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    kinds = [json.loads(line)["kind"] for line in f]
  assert kinds.count("train") == STEPS and kinds.count("run") == 1

  # Single process, 4 devices, same mesh shape (data=4), same global batches.
  c = smoke.get_config(f"steps={STEPS}")
  setup = trainer.Setup(c, mesh=sharding.make_mesh(dict(c.mesh), devices=jax.devices()[:4]))
  state = setup.init_state(c.train.seed)
  ref = []
  for b in _global_batches(c, 2, STEPS):
    state, m = setup.train_step(state, setup.global_batch(b))
    ref.append(float(m["loss"]))
  np.testing.assert_allclose([mh[s] for s in range(1, STEPS + 1)], ref, rtol=1e-5, atol=1e-6)

  # The multi-host checkpoint restores on one process into a different layout
  # (2 devices) and holds the parameters the single-process run reached.
  c2 = smoke.get_config(f"steps={STEPS}")
  s2 = trainer.Setup(c2, mesh=sharding.make_mesh(dict(c2.mesh), devices=jax.devices()[:2]))
  manager = checkpointing.make_manager(workdir, keep=3, async_save=False)
  assert manager.latest_step() == STEPS
  restored = checkpointing.restore(manager, STEPS, s2.abstract_state, None)
  manager.close()
  got = traverse_util.flatten_dict(jax.device_get(restored.params))
  want = traverse_util.flatten_dict(jax.device_get(state.params))
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=str(k))

  # The training CLI resumes the 2-process run on 1 process (2 devices) and goes on.
  env1 = dict(env, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  r = subprocess.run(_train_cmd(workdir, STEPS + 2), env=env1, cwd=ROOT, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert f"Resumed from checkpoint step {STEPS}" in r.stdout
  after = _losses(workdir)
  assert {STEPS + 1, STEPS + 2} <= set(after) and all(np.isfinite(after[s]) for s in after)


@pytest.mark.parametrize("impl", ["xla_blockwise", pytest.param("pallas", marks=pytest.mark.slow),
                                  pytest.param("xla", marks=pytest.mark.slow)])
def test_context_axis_shards_the_sequence_and_keeps_the_loss(impl, monkeypatch):
  """data=2 x context=4 on 8 fake devices == 1 device with the XLA attention.

  ``xla`` (slow; the dense oracle): XLA's partitioner gathers k / v. ``pallas`` and
  ``xla_blockwise`` (the CPU / GPU default): the kernel runs per shard on its 16 query
  rows against the gathered 64 keys (blocks of 16; Pallas in interpret mode),
  ``attention_lib.context_parallel_flash_mixed_attention``.
  """
  c1 = smoke.get_config()
  c1.mesh.data = 1
  c1.model.attention_impl = "xla"
  s1 = trainer.Setup(c1, mesh=sharding.make_mesh(dict(c1.mesh), devices=jax.devices()[:1]))
  c8 = smoke.get_config()
  c8.mesh.data, c8.mesh.context = 2, 4
  c8.model.attention_impl = impl
  c8.model.attention_block_q = c8.model.attention_block_kv = 16
  traced = []   # the context-parallel kernel is what the pallas step traces
  cp = attention_lib.context_parallel_flash_mixed_attention
  monkeypatch.setattr(attention_lib, "context_parallel_flash_mixed_attention",
                      lambda *a, **k: traced.append(k["context_axes"]) or cp(*a, **k))
  s8 = trainer.Setup(c8)
  assert s8.batch_shardings["input_ids"].spec == jax.sharding.PartitionSpec(("data", "fsdp"), "context")
  it = trainer.make_data_iterator(c1)
  batches = [next(it) for _ in range(2)]
  st1 = s1.init_state(0)
  st8 = s8.state_from_params(jax.device_get(st1.params))
  for b in batches:
    st1, m1 = s1.train_step(st1, s1.global_batch(b))
    st8, m8 = s8.train_step(st8, s8.global_batch(b))
    np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m8["grad_norm"]), float(m1["grad_norm"]), rtol=1e-4)
  # The activations really are split along the sequence: the compiled step
  # carries the context-sharded layout of the hidden states.
  hlo = s8.train_step.lower(st8, s8.global_batch(batches[0])).compile().as_text()
  assert "all-gather" in hlo
  if impl != "xla":
    assert traced and set(traced) == {"context"}
  else:
    assert not traced
