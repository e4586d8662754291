"""Trainer behaviour: sharding invariance, exact resume after SIGKILL, stage-1 freezing."""

import json
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from flax import traverse_util

from neo_jax.configs import smoke
from testlib import train as train_testlib
from neo_jax.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _batches(config, n):
  it = trainer.make_data_iterator(config)
  return [next(it) for _ in range(n)]


def _run_steps(setup, state, batches):
  losses = []
  for b in batches:
    state, m = setup.train_step(state, setup.global_batch(b))
    losses.append(float(m["loss"]))
  return state, losses


@pytest.mark.parametrize("accum", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_8_device_mesh_matches_single_device(accum):
  """data=2, fsdp=2, tensor=2 on 8 fake CPU devices == 1 device (<= 1e-5 relative)."""
  assert jax.device_count() == 8
  c1 = smoke.get_config(f"accum={accum}")
  c1.mesh.data = 1
  s1 = trainer.Setup(c1, mesh=__import__("neo_jax.train.sharding", fromlist=["x"]).make_mesh(
      dict(c1.mesh), devices=jax.devices()[:1]))
  c8 = smoke.get_config(f"accum={accum}")
  c8.mesh.data, c8.mesh.fsdp, c8.mesh.tensor = 2, 2, 2
  s8 = trainer.Setup(c8)
  batches = _batches(c1, 3)
  st1 = s1.init_state(0)
  params0 = jax.device_get(st1.params)
  st8 = s8.state_from_params(params0)
  # The 8-device state really is sharded (the q projection over heads).
  q = st8.params["llm"]["layers"]["self_attn"]["q_proj"]["kernel"]
  assert len({d for d in q.sharding.device_set}) == 8 and not q.sharding.is_fully_replicated
  st1, l1 = _run_steps(s1, st1, batches)
  st8, l8 = _run_steps(s8, st8, batches)
  np.testing.assert_allclose(l8, l1, rtol=1e-5)
  f1 = traverse_util.flatten_dict(jax.device_get(st1.params))
  f8 = traverse_util.flatten_dict(jax.device_get(st8.params))
  # Compared in norm: Adam's update divides by sqrt(v), so an element whose gradient is
  # ~0 turns a last-bit difference in the reduction order of 8 devices into a visible
  # element-wise change.
  # Whole parameter vector <= 1e-5 relative; single small tensors (a 32-wide bias) <= 1e-4.
  diff = np.sqrt(sum(np.sum((f8[k] - f1[k]) ** 2) for k in f1))
  norm = np.sqrt(sum(np.sum(f1[k] ** 2) for k in f1))
  assert diff / norm <= 1e-5, diff / norm
  for k in f1:
    err = np.linalg.norm(f8[k] - f1[k]) / np.linalg.norm(f1[k])
    assert err <= 1e-4, (k, err)
  # Parameters moved: the comparison is not between two untouched copies.
  moved = traverse_util.flatten_dict(params0)
  assert any(not np.allclose(moved[k], f1[k]) for k in f1)


def test_stage1_trains_only_intended_parameters():
  """Stage 1 (docs/design.md §4.3): patch embedder, pre-Buffer, post-LLM H/W QK params change; nothing else."""
  c = smoke.get_config()
  c.train.trainable = "stage1"
  s = trainer.Setup(c)
  st = s.init_state(0)
  before = traverse_util.flatten_dict(jax.device_get(st.params))
  st, _ = _run_steps(s, st, _batches(c, 1))
  after = traverse_util.flatten_dict(jax.device_get(st.params))
  changed = {"/".join(k) for k in before if not np.array_equal(before[k], after[k])}
  hw = ("q_proj_hw", "k_proj_hw", "q_norm_h", "q_norm_w", "k_norm_h", "k_norm_w")
  expected = {"/".join(k) for k in before
              if k[0] in ("vision_model", "prebuffer") or (k[0] == "llm" and k[3] in hw)}
  # Norm scales may keep their value after one step only if their gradient is 0; all of
  # the expected set has non-zero gradients on this batch except none, so demand equality.
  assert changed == expected
  # Frozen parameters carry no optimizer state.
  leaves = jax.tree_util.tree_leaves(st.opt_state)
  n_state = sum(x.size for x in leaves if hasattr(x, "size") and x.ndim > 0)
  n_train = sum(before[k].size for k in before if "/".join(k) in expected)
  assert n_state == 2 * n_train


def _train_cmd(workdir, steps):
  return train_testlib.train_cmd(workdir, steps, every=4)


_losses = train_testlib.logged_losses


def test_resume_after_sigkill_reproduces_losses(tmp_path):
  """Kill -9 mid-run, restart with the same command: losses after the restart equal an uninterrupted run."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
             PYTHONPATH=ROOT)
  full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
  subprocess.run(_train_cmd(full, 14), env=env, check=True, capture_output=True, cwd=ROOT)
  proc = subprocess.Popen(_train_cmd(killed, 14), env=env, cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt = os.path.join(killed, "checkpoints", "8")
  deadline = time.time() + 300
  while not os.path.isdir(ckpt) and time.time() < deadline and proc.poll() is None:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert os.path.isdir(ckpt), "the run ended before its step-8 checkpoint"
  logged_before = _losses(killed)
  assert max(logged_before) < 14, "the kill came too late to test a resume"
  r = subprocess.run(_train_cmd(killed, 14), env=env, check=True, capture_output=True, text=True,
                     cwd=ROOT)
  assert "Resumed from checkpoint step" in r.stdout
  resumed_from = int(r.stdout.split("Resumed from checkpoint step")[1].split()[0])
  assert resumed_from >= 8
  ref, got = _losses(full), _losses(killed)
  for step in range(resumed_from + 1, 15):
    assert got[step] == ref[step], (step, got[step], ref[step])


def test_non_finite_loss_stops_without_overwriting_checkpoint(tmp_path):
  """A diverging run raises NonFiniteLossError naming the step; the checkpoints on disk
  are those of finite states only (the last good one is kept)."""
  c = smoke.get_config("steps=12")
  c.train.lr = 1e30  # the first update already makes the parameters overflow
  c.train.grad_clip = 0.0
  c.train.warmup_steps = 1
  c.checkpoint.every_steps = 1
  c.checkpoint.async_save = False
  workdir = str(tmp_path)
  with pytest.raises(trainer.NonFiniteLossError, match="Non-finite"):
    trainer.run(c, workdir)
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert saved, "no finite step was checkpointed before the divergence"
  logged = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert max(saved) == max(r["step"] for r in logged)  # it stopped right after the last save
  # Restore every saved state and check it is finite.
  s = trainer.Setup(c)
  from neo_jax.train import checkpointing  # pylint: disable=g-import-not-at-top
  mgr = checkpointing.make_manager(workdir, keep=10, async_save=False)
  for step in saved:
    st = checkpointing.restore(mgr, step, s.abstract_state, None)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(st.params))
  mgr.close()


@pytest.mark.parametrize("trainable", ["all", "stage1"])
def test_optimizer_state_is_sharded_like_its_parameters(trainable):
  """Adam moments get their parameter's sharding (not replicated), with and without frozen
  parameters (MaskedNode in the state); counts are replicated."""
  from neo_jax.train import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  c = smoke.get_config()
  c.train.trainable = trainable
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  s = trainer.Setup(c)
  flat_p = traverse_util.flatten_dict(s.param_shardings)
  matched = 0
  for path, sh in jax.tree_util.tree_leaves_with_path(s.state_shardings.opt_state):
    names = tuple(getattr(k, "key", None) for k in path)
    hits = [v for k, v in flat_p.items() if names[-len(k):] == k]
    if hits:
      matched += 1
      assert sh == hits[0], (names, sh, hits[0])
    else:
      assert sh == sharding_lib.replicated(s.mesh), names
  q = s.param_shardings["llm"]["layers"]["self_attn"]["q_proj_hw"]["kernel"]
  assert not q.is_fully_replicated
  n_trainable = sum(jax.tree_util.tree_leaves(s.trainable))
  assert matched == 2 * n_trainable  # mu and nu of every trainable parameter
