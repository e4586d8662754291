"""Where the trainer reproduces the authors' release (VLMTrainKit/neo) on request:
the stage-1 trainable set, the weight-decay set, per-sequence loss normalisation,
and the dtype of imported parameters."""

from __future__ import annotations

import re

from flax import linen as nn
from flax import traverse_util
import jax
import ml_dtypes
import numpy as np
import pytest

from neo_jax.configs import smoke
from neo_jax.convert import param_mapping as pm
from neo_jax.model import config as config_lib
from neo_jax.train import optimizer, sharding, trainer
from neo_jax.train.setup import abstract_params, build_model
from neo_jax.train.step import loss_sums


def release_stage1_keeps(name: str, extra_num_layers: int) -> bool:
  """The release's ``set_model`` filter (VLMTrainKit/neo/train/train.py), verbatim logic."""
  parts = name.split(".")
  return ("_h" in name or "_w" in name or "_hw" in name or "vision_model" in name
          or (len(parts) > 2 and parts[2].isdigit() and int(parts[2]) < extra_num_layers))


def _paths_by_release_rule(cfg, rule) -> set[str]:
  """Our parameter paths whose release names the rule keeps (every stacked layer agrees)."""
  out = set()
  for leaf in pm.leaves(cfg):
    if not cfg.tie_word_embeddings or leaf.path != ("lm_head", "kernel"):
      votes = {rule(k) for k in leaf.keys}
      assert len(votes) == 1, (leaf.path, leaf.keys)
      if votes.pop():
        out.add("/".join(leaf.path))
  return out


def _mask_paths(mask) -> set[str]:
  return {"/".join(k) for k, v in traverse_util.flatten_dict(mask).items() if v}


def build_model_cfg(cfg):
  c = smoke.get_config()
  c.model = cfg
  return build_model(c)


@pytest.mark.parametrize("tie", [True, False])
def test_release_stage1_is_exactly_what_the_release_filter_trains(tie):
  cfg = config_lib.get_model_config("tiny", tie_word_embeddings=tie, num_prebuffer_layers=2)
  params = nn.meta.unbox(abstract_params(build_model_cfg(cfg)))
  train_cfg = smoke.get_config().train
  train_cfg.trainable = "release_stage1"
  mask = optimizer.trainable_mask(params, optimizer.trainable_patterns(train_cfg))
  want = _paths_by_release_rule(cfg, lambda k: release_stage1_keeps(k, 2))
  assert _mask_paths(mask) == want
  # What the finding means: the pre-Buffer trains only its H/W parameters; the head
  # trains only when untied; the paper's stage-1 set is different.
  assert "prebuffer/layers/mlp/up_proj/kernel" not in want
  assert "prebuffer/layers/self_attn/q_proj_hw/kernel" in want
  assert ("lm_head/kernel" in want) == (not tie)
  assert "embed_tokens/embedding" not in want
  train_cfg.trainable = "stage1"
  paper = _mask_paths(optimizer.trainable_mask(params, optimizer.trainable_patterns(train_cfg)))
  assert "prebuffer/layers/mlp/up_proj/kernel" in paper and paper != want


def test_removed_release_lm_head_option_says_what_to_use():
  train_cfg = smoke.get_config().train
  train_cfg.trainable = "stage1"
  train_cfg.release_stage1_lm_head = True
  with pytest.raises(ValueError, match="release_stage1"):
    optimizer.trainable_patterns(train_cfg)


def _torch_module_with_release_names(keys):
  """An ``nn.Module`` tree whose ``named_parameters()`` are the release's keys."""
  torch = pytest.importorskip("torch")
  root = torch.nn.Module()
  for key in keys:
    *mods, leaf = key.split(".")
    node = root
    for m in mods:
      if not hasattr(node, m):
        node.add_module(m, torch.nn.Module())
      node = getattr(node, m)
    node.register_parameter(leaf, torch.nn.Parameter(torch.zeros(1)))
  return root


@pytest.mark.torch
def test_release_decay_mask_equals_transformers_trainer():
  """``weight_decay_mask="release"`` == what transformers 4.57.1's Trainer decays, asked
  of transformers itself on a module tree with the release's parameter names."""
  transformers = pytest.importorskip("transformers")
  cfg = config_lib.get_model_config("tiny", tie_word_embeddings=False)
  keys = pm.release_keys(cfg)
  decayed = set(transformers.Trainer.get_decay_parameter_names(
      None, _torch_module_with_release_names(keys)))
  want = set()
  for leaf in pm.leaves(cfg):
    votes = {k in decayed for k in leaf.keys}
    assert len(votes) == 1, leaf.path
    if votes.pop():
      want.add("/".join(leaf.path))
  params = nn.meta.unbox(abstract_params(build_model_cfg(cfg)))
  got = _mask_paths(optimizer.release_decay_mask(params, cfg))
  assert got == want
  # The difference from our default: the H/W norm gains decay in the release.
  assert "llm/layers/self_attn/q_norm_h/scale" in got
  assert "llm/layers/self_attn/q_norm/scale" not in got
  ours = _mask_paths(optimizer.decay_mask(params))
  assert "llm/layers/self_attn/q_norm_h/scale" not in ours
  assert got - ours == {p for p in got if re.search(r"_norm_[hw]/scale$", p)}


@pytest.mark.slow  # a minute on 2 cores: `bash scripts/test.sh -m slow`
def test_per_sequence_loss_on_8_devices_is_the_mean_of_each_sequence_alone(devices8):
  c = smoke.get_config()
  c.train.loss_normalization = "per_sequence"
  c.mesh.data = 8
  s8 = trainer.Setup(c, mesh=sharding.make_mesh(dict(c.mesh), devices=list(devices8.flat)))
  batch = next(trainer.make_data_iterator(c))
  st = s8.init_state(0)
  params = jax.device_get(st.params)
  _, m = s8.train_step(st, s8.global_batch(batch))
  alone = []
  for r in range(c.batch_size):
    row = {k: v[r:r + 1] for k, v in batch.items()}
    out = loss_sums(params, row, s8.model)   # global normalisation of one sequence
    alone.append(float(out.weighted_ce) / max(float(out.weight), 1e-5))
  np.testing.assert_allclose(float(m["loss"]), np.mean(alone), rtol=1e-5)
  # And it differs from the global normalisation on this batch.
  c.train.loss_normalization = "global"
  s1 = trainer.Setup(c, mesh=sharding.make_mesh(dict(c.mesh), devices=list(devices8.flat)))
  _, g = s1.train_step(s1.state_from_params(params), s1.global_batch(batch))
  assert abs(float(g["loss"]) - float(m["loss"])) > 1e-4


def test_bf16_init_from_gets_float32_master_weights():
  c = smoke.get_config()
  s = trainer.Setup(c)
  p32 = jax.device_get(s.init_state(0).params)
  p16 = jax.tree_util.tree_map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16), p32)
  st = s.state_from_params(p16)
  dtypes = {x.dtype for x in jax.tree_util.tree_leaves(st.params)}
  assert dtypes == {np.dtype(np.float32)}
  moments = [x for x in jax.tree_util.tree_leaves(st.opt_state) if getattr(x, "ndim", 0) > 0]
  assert moments and {x.dtype for x in moments} == {np.dtype(np.float32)}
  bad = dict(p16)
  bad["norm"] = {"scale": np.zeros((3,), np.float32)}
  with pytest.raises(ValueError, match="norm"):
    s.state_from_params(bad)
