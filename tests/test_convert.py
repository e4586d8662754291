"""Conversion tests without PyTorch: the mapping table, round trips, Orbax I/O, configs, CLI."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from neo_jax.convert import convert as cv, hf_config, orbax_io, param_mapping as pm
from neo_jax.convert import safetensors_io
from neo_jax.model import config as config_lib
from neo_jax.model.neo import NEO

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flat(tree):
  return dict(orbax_io.flatten(tree))


def _assert_bit_equal(a, b):
  fa, fb = _flat(a), _flat(b)
  assert set(fa) == set(fb)
  for p in fa:
    x, y = np.asarray(fa[p]), np.asarray(fb[p])
    assert x.dtype == y.dtype and x.shape == y.shape, p
    assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), p


def test_table_matches_model_init():
  cfg = config_lib.get_model_config("tiny")  # tied: model.init creates every leaf
  b, s = 1, 4
  v = jax.eval_shape(NEO(cfg).init, jax.random.PRNGKey(0), jnp.zeros((b, s), jnp.int32),
                     jnp.ones((b, s), jnp.int32), jnp.zeros((b, s, 2), jnp.int32),
                     jnp.zeros((b, s, 4, 768), jnp.uint8))
  got = {p: np.shape(x) for p, x in _flat(nn.meta.unbox(v["params"])).items()}
  want = {leaf.path: leaf.shape for leaf in pm.leaves(cfg)}
  assert got == want


def test_release_keys_match_spec():
  cfg = config_lib.get_model_config("tiny", num_prebuffer_layers=2, tie_word_embeddings=False)
  keys = pm.release_keys(cfg)
  assert len(keys) == len(set(keys)) == 4 + 3 + 17 * 4
  assert "language_model.model.layers.3.self_attn.q_norm_h.weight" in keys
  assert "language_model.model.layers.4.self_attn.q_norm_h.weight" not in keys
  assert "language_model.lm_head.weight" in keys
  leaves = {l.path: l for l in pm.leaves(cfg)}
  assert leaves[("llm", "layers", "mlp", "up_proj", "kernel")].keys[0] == (
      "language_model.model.layers.2.mlp.up_proj.weight")


def test_hooks_layouts():
  cfg = config_lib.get_model_config("tiny")
  rng = np.random.default_rng(0)
  ent = {e.path: e for e in pm.GLOBAL_ENTRIES + pm.LAYER_ENTRIES}
  # Conv: our patch kernel column v is the flattened (c, y, x) OIHW filter.
  k = rng.standard_normal((768, 32)).astype(np.float32)
  w = ent[("vision_model", "patch_embedding", "kernel")].to_torch(k, cfg)
  assert w.shape == (32, 3, 16, 16) and w[5, 2, 3, 7] == k[2 * 256 + 3 * 16 + 7, 5]
  # Dense conv: our row (dy, dx, v).
  k = rng.standard_normal((4 * 32, 64)).astype(np.float32)
  w = ent[("vision_model", "dense_embedding", "kernel")].to_torch(k, cfg)
  assert w.shape == (64, 32, 2, 2) and w[9, 4, 1, 0] == k[(1 * 2 + 0) * 32 + 4, 9]
  # o_proj [Hq, d, D] -> [D, Hq d].
  k = rng.standard_normal((4, 16, 64)).astype(np.float32)
  w = ent[("self_attn", "o_proj", "kernel")].to_torch(k, cfg)
  assert w.shape == (64, 64) and w[3, 2 * 16 + 5] == k[2, 5, 3]
  for e in pm.GLOBAL_ENTRIES + pm.LAYER_ENTRIES:
    shape = pm.global_shapes(config_lib.get_model_config("tiny", tie_word_embeddings=False)).get(
        e.path) or pm.layer_shapes(cfg)[e.path]
    x = rng.standard_normal(shape).astype(np.float32)
    t = e.to_torch(x, cfg)
    assert t.shape == tuple(e.torch_shape(shape, cfg)), e.path
    np.testing.assert_array_equal(e.from_torch(t, cfg, shape), x)


@pytest.mark.parametrize("tie,dtype", [(True, "float32"), (False, "bfloat16")])
def test_export_import_bit_equal(tmp_path, tie, dtype):
  cfg = config_lib.get_model_config("tiny", tie_word_embeddings=tie, num_prebuffer_layers=2)
  params = cv.collect(cv.random_leaves(cfg, dtype=dtype, seed=7))
  dst = str(tmp_path / "hf")
  info = cv.export_release(cv.TreeSource(params), cfg, dst, dtype=dtype, progress=False,
                           max_shard_bytes=100_000)
  assert len(info["shards"]) > 1 and os.path.isfile(os.path.join(dst, "model.safetensors.index.json"))
  # tiny's image token ids (500..502) are not the built-in tokenizer's: none written.
  assert info["tokenizer_files"] == [] and not os.path.exists(os.path.join(dst, "tokenizer.json"))
  reader = safetensors_io.SafetensorsReader(dst)
  assert sorted(reader.keys()) == sorted(pm.release_keys(cfg))
  cfg2 = cv.release_config(dst)
  for k in ("vocab_size", "hidden_size", "num_prebuffer_layers", "num_llm_layers",
            "tie_word_embeddings", "head_dim", "vision_hidden", "downsample",
            "img_context_token_id", "img_start_token_id", "img_end_token_id", "rope_theta_hw"):
    assert cfg2[k] == cfg[k], k
  back = cv.collect(cv.release_leaves(dst, cfg2, dtype=dtype))
  _assert_bit_equal(params, back)


def test_orbax_roundtrip_and_reader(tmp_path):
  cfg = config_lib.get_model_config("tiny", tie_word_embeddings=False)
  params = cv.collect(cv.random_leaves(cfg, dtype="bfloat16"))
  path = str(tmp_path / "ckpt")
  orbax_io.save_params(path, params, cfg)
  _assert_bit_equal(params, orbax_io.load_params(path))
  assert orbax_io.load_config(path).to_dict() == cfg.to_dict()
  r = orbax_io.ParamReader(path)
  x = r.get(("llm", "layers", "self_attn", "o_proj", "kernel"))
  assert x.dtype == ml_dtypes.bfloat16 and x.shape == (2, 4, 16, 64)
  with pytest.raises(FileExistsError):
    orbax_io.save_params(path, params, cfg)
  # Restore into jax arrays with a sharding (the trainer's path).
  sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32, sharding=sh), params)
  got = orbax_io.load_params(path, target)
  leaf = got["llm"]["layers"]["mlp"]["up_proj"]["kernel"]
  assert isinstance(leaf, jax.Array) and leaf.dtype == jnp.float32


def test_release_config_quirks():
  cfg = config_lib.get_model_config("tiny", num_prebuffer_layers=3, tie_word_embeddings=False)
  hf = hf_config.to_release_config(cfg)
  assert len(hf["llm_config"]["layer_types"]) == hf["llm_config"]["num_hidden_layers"] == 5
  assert hf["vision_config"]["llm_hidden_size"] == 64 and hf["downsample_ratio"] == 0.5
  # The release's own saved configs: 1-tuples as lists, layer_types too short,
  # token ids only in the tokenizer.
  q = json.loads(json.dumps(hf))
  q["vision_config"]["llm_hidden_size"] = [64]
  q["vision_config"]["downsample_ratio"] = [0.5]
  q["llm_config"]["layer_types"] = ["full_attention"] * 2
  for k in ("img_context_token_id", "img_start_token_id", "img_end_token_id"):
    q.pop(k)
  got = hf_config.from_release_config(q, token_ids={"img_context_token_id": 7,
                                                    "img_start_token_id": 8,
                                                    "img_end_token_id": 9})
  assert (got.num_prebuffer_layers, got.num_llm_layers, got.downsample) == (3, 2, 2)
  assert (got.img_context_token_id, got.img_end_token_id) == (7, 9)
  assert got.vocab_size == 512 and not got.tie_word_embeddings
  q["llm_config"]["hidden_size"] = 128
  with pytest.raises(ValueError, match="llm_hidden_size"):
    hf_config.from_release_config(q)


def test_vocab_resize_on_export_and_import(tmp_path):
  cfg = config_lib.get_model_config("tiny", tie_word_embeddings=False)
  params = cv.collect(cv.random_leaves(cfg))
  dst = str(tmp_path / "hf")
  cv.export_release(cv.TreeSource(params), cfg, dst, dtype="float32", vocab_size=520,
                    progress=False)
  r = safetensors_io.SafetensorsReader(dst)
  assert r.shape("language_model.lm_head.weight") == (520, 64)
  cfg2 = cv.release_config(dst, vocab_size=512)
  back = cv.collect(cv.release_leaves(dst, cfg2))
  _assert_bit_equal(params, back)


def test_import_errors_name_the_key(tmp_path):
  cfg = config_lib.get_model_config("tiny")
  params = cv.collect(cv.random_leaves(cfg))
  dst = str(tmp_path / "hf")
  cv.export_release(cv.TreeSource(params), cfg, dst, dtype="float32", progress=False)
  cfg_bad = cv.release_config(dst, intermediate_size=96)
  with pytest.raises(ValueError, match=r"layers\.0\.mlp\.gate_proj\.weight"):
    list(cv.release_leaves(dst, cfg_bad))
  cfg_untied = cv.release_config(dst, tie_word_embeddings=False)
  with pytest.raises(KeyError, match="lm_head"):
    list(cv.release_leaves(dst, cfg_untied))


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-m", "neo_jax.convert", *args, "--noprogress"],
                        cwd=REPO, env=env, capture_output=True, text=True)


def test_cli_roundtrip(tmp_path):
  cfg = config_lib.get_model_config("tiny", num_prebuffer_layers=1)
  params = cv.collect(cv.random_leaves(cfg, dtype="bfloat16", seed=2))
  ck = str(tmp_path / "ck")
  orbax_io.save_params(ck, params, cfg)
  tok = tmp_path / "tok"
  tok.mkdir()
  (tok / "tokenizer_config.json").write_text("{}")
  hf = str(tmp_path / "hf")
  r = _cli("export", f"--src={ck}", f"--dst={hf}", f"--tokenizer_dir={tok}")
  assert r.returncode == 0, r.stderr[-2000:]
  assert os.path.isfile(os.path.join(hf, "tokenizer_config.json"))
  assert not os.path.exists(os.path.join(hf, "vocab.json"))  # copied, not the built-in files
  ck2 = str(tmp_path / "ck2")
  r = _cli("import-neo", f"--src={hf}", f"--dst={ck2}", "--dtype=bfloat16")
  assert r.returncode == 0, r.stderr[-2000:]
  _assert_bit_equal(params, orbax_io.load_params(ck2))
  r = _cli("import-neo", f"--src={tmp_path / 'missing'}", f"--dst={tmp_path / 'x'}")
  assert r.returncode == 1 and "config.json" in r.stderr


def test_builtin_tokenizer_mismatch():
  assert cv.builtin_tokenizer_mismatch(config_lib.get_model_config("neo_2b")) == ""
  assert cv.builtin_tokenizer_mismatch(config_lib.get_model_config("neo_9b"), vocab_size=151682) == ""
  assert "vocabulary rows" in cv.builtin_tokenizer_mismatch(config_lib.get_model_config("neo_2b"),
                                                            vocab_size=151000)
  assert "img_context_token_id" in cv.builtin_tokenizer_mismatch(config_lib.get_model_config("tiny"))


def test_cli_export_writes_tokenizer(tmp_path):
  """Without --tokenizer_dir, export writes the built-in Qwen3 + NEO tokenizer files."""
  from neo_jax.data import hf_tokenizer, tokenizer as tok_lib
  cfg = config_lib.get_model_config("tiny", vocab_size=151682, img_context_token_id=151669,
                                    img_start_token_id=151670, img_end_token_id=151671)
  params = cv.collect(cv.random_leaves(cfg, dtype="bfloat16", seed=3))
  ck = str(tmp_path / "ck")
  orbax_io.save_params(ck, params, cfg)
  hf = str(tmp_path / "hf")
  r = _cli("export", f"--src={ck}", f"--dst={hf}")
  assert r.returncode == 0, r.stderr[-2000:]
  for name in hf_tokenizer.TOKENIZER_FILE_NAMES:
    assert os.path.isfile(os.path.join(hf, name)), name
  transformers = pytest.importorskip("transformers")
  # VLMEvalKit's load; the ids it looks up agree with config.json.
  at = transformers.AutoTokenizer.from_pretrained(hf, trust_remote_code=True, use_fast=False)
  with open(os.path.join(hf, "config.json")) as f:
    hfc = json.load(f)
  for tok, key in (("<IMG_CONTEXT>", "img_context_token_id"), ("<img>", "img_start_token_id"),
                   ("</img>", "img_end_token_id")):
    assert at.convert_tokens_to_ids(tok) == hfc[key], tok
  text = "<|im_start|>user\n<img><IMG_CONTEXT></img>\nWhat digit?<|im_end|>\n"
  assert at(text)["input_ids"] == tok_lib.get_tokenizer("embedded").encode(text)
  ck2 = str(tmp_path / "ck2")
  r = _cli("import-neo", f"--src={hf}", f"--dst={ck2}", "--dtype=bfloat16")
  assert r.returncode == 0, r.stderr[-2000:]
  _assert_bit_equal(params, orbax_io.load_params(ck2))
