"""Conversions checked against PyTorch: transformers' Qwen3 and our torch reference."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from neo_jax.convert import convert as cv
from neo_jax.model import config as config_lib
from neo_jax.model.neo import NEO

from testlib import batch as neo_batch_util

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.torch

TOL = 1e-4


def _tiny_qwen3(tmp_path, tie: bool):
  cfg = transformers.Qwen3Config(
      vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
      rope_theta=1_000_000.0, tie_word_embeddings=tie, max_position_embeddings=512)
  torch.manual_seed(0)
  model = transformers.Qwen3ForCausalLM(cfg).eval()
  with torch.no_grad():  # non-trivial norms so that a swapped norm would show
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  path = str(tmp_path / f"qwen3_tie{int(tie)}")
  model.save_pretrained(path, safe_serialization=True)
  return model, path


@pytest.mark.parametrize("tie", [True, False])
def test_qwen3_import_matches_transformers(tmp_path, tie):
  model, path = _tiny_qwen3(tmp_path, tie)
  cfg = cv.qwen3_config(path, num_prebuffer_layers=0, vocab_size=512, base="tiny",
                        img_context_token_id=500, img_start_token_id=501, img_end_token_id=502)
  params = cv.collect(cv.qwen3_leaves(path, cfg, dtype="float32"))
  ids = np.random.default_rng(0).integers(0, 500, (2, 24)).astype(np.int32)
  with torch.no_grad():
    want = model(torch.from_numpy(ids).long()).logits.numpy()
  b, s = ids.shape
  got = NEO(cfg).apply({"params": params}, jnp.asarray(ids), jnp.ones((b, s), jnp.int32),
                       jnp.zeros((b, s, 2), jnp.int32), jnp.zeros((b, s, 4, 768), jnp.uint8))
  err = float(np.max(np.abs(np.asarray(got) - want)))
  assert err <= TOL, err
  # docs/design.md §2 initialisation of the extra parameters.
  l0 = params["llm"]["layers"]["self_attn"]
  q = l0["q_proj"]["kernel"]
  d = cfg.head_dim
  np.testing.assert_array_equal(l0["q_proj_hw"]["kernel"][..., : d // 4], q[..., : d // 4])
  np.testing.assert_array_equal(l0["q_proj_hw"]["kernel"][..., d // 4: d // 2],
                                q[..., d // 2: 3 * d // 4])
  np.testing.assert_array_equal(l0["q_proj_hw"]["kernel"][..., d // 2:],
                                l0["q_proj_hw"]["kernel"][..., : d // 2])
  assert not np.any(l0["k_proj_hw"]["kernel"])
  assert np.all(l0["q_norm_h"]["scale"] == 1)


def test_qwen3_import_grows_vocab_and_adds_prebuffer(tmp_path):
  _, path = _tiny_qwen3(tmp_path, tie=False)
  # Default NEO ids: vocabulary grows to hold <|interpreter|> = 151681.
  cfg = cv.qwen3_config(path, num_prebuffer_layers=2, base="tiny",
                        img_context_token_id=151669, img_start_token_id=151670,
                        img_end_token_id=151671)
  assert cfg.vocab_size == 151682
  assert not cfg.tie_word_embeddings
  leaves = dict(cv.qwen3_leaves(path, cfg, new_rows="normal"))
  emb = leaves[("embed_tokens", "embedding")]
  assert emb.shape == (151682, 64) and np.std(emb[512:]) == pytest.approx(0.02, rel=0.05)
  assert leaves[("lm_head", "kernel")].shape == (64, 151682)
  pre = leaves[("prebuffer", "layers", "self_attn", "k_proj_hw", "kernel")]
  assert pre.shape[0] == 2 and np.std(pre) == pytest.approx(0.02, rel=0.1)
  zero = dict(cv.qwen3_leaves(path, cfg))[("embed_tokens", "embedding")]
  assert not np.any(zero[512:])


def _torch_sequence(rel_seq):
  ids, sid, pix, grids = [], [], [], []
  for i, smp in enumerate(rel_seq):
    ids.append(smp["input_ids"])
    sid.append(np.full(len(smp["input_ids"]), i))
    if smp["pixel_values"] is not None:
      pix.append(smp["pixel_values"])
      grids.append(smp["grid_hw"])
  t = lambda x: torch.from_numpy(np.concatenate(x))
  return (t(ids).long(), t(sid).long(), t(pix) if pix else None,
          t(grids).long() if grids else None)


def torch_reference_logits(export_dir, release, seq_len, vocab):
  """Our torch reference on every packed sequence; ``[B, S, vocab]`` (padding 0)."""
  from safetensors.torch import load_file
  from testlib import torch_reference as torch_ref_neo
  sd = {}
  for f in sorted(os.listdir(export_dir)):
    if f.endswith(".safetensors"):
      sd.update(load_file(os.path.join(export_dir, f)))
  with open(os.path.join(export_dir, "config.json")) as f:
    ref = torch_ref_neo.TorchNEO(sd, json.load(f))
  out = np.zeros((len(release), seq_len, vocab), np.float32)
  for b, rel_seq in enumerate(release):
    n = rel_seq[-1]["span"][1]
    out[b, :n] = ref.forward(*_torch_sequence(rel_seq)).numpy()
  return out


@pytest.mark.parametrize("tie", [True, False])
def test_export_runs_in_torch_reference(tmp_path, tie):
  cfg = config_lib.get_model_config("tiny", tie_word_embeddings=tie, num_prebuffer_layers=2,
                                    rope_theta_vision=1000.0, init_std=0.1)
  params = cv.collect(cv.random_leaves(cfg, seed=3))
  # Non-trivial norms and biases so that layout mistakes in them would show.
  rng = np.random.default_rng(1)
  for path in list(cv.TreeSource(params).paths()):
    if path[-1] in ("scale", "bias"):
      d = params
      for name in path[:-1]:
        d = d[name]
      d[path[-1]] = (d[path[-1]] + 0.1 * rng.standard_normal(d[path[-1]].shape)).astype(np.float32)
  seq_len = 64
  ours, release = neo_batch_util.build(neo_batch_util.SEQUENCES, cfg, seq_len, seed=0)
  got = np.asarray(NEO(cfg).apply(
      {"params": params}, ours["input_ids"], ours["segment_ids"], ours["token_hw"],
      ours["pixel_values"]))
  dst = str(tmp_path / "export")
  cv.export_release(cv.TreeSource(params), cfg, dst, dtype="float32", progress=False)
  want = torch_reference_logits(dst, release, seq_len, cfg.vocab_size)
  real = ours["segment_ids"] > 0
  err = float(np.max(np.abs(got[real] - want[real])))
  assert err <= TOL, err


def test_plain_torch_state_dict(tmp_path):
  from safetensors.torch import load_file
  cfg = config_lib.get_model_config("tiny", tie_word_embeddings=False)
  params = cv.collect(cv.random_leaves(cfg, dtype="bfloat16"))
  dst, tf = str(tmp_path / "hf"), str(tmp_path / "model.pt")
  cv.export_release(cv.TreeSource(params), cfg, dst, dtype="bfloat16", torch_file=tf,
                    progress=False)
  sd = torch.load(tf)
  st = load_file(os.path.join(dst, "model.safetensors"))
  assert sorted(sd) == sorted(st)
  for k in sd:
    assert sd[k].dtype == torch.bfloat16 and torch.equal(sd[k], st[k]), k
