"""The KV-cache decoder against the uncached one (which re-runs each whole row per token):
same greedy tokens and per-step logits on prompts of text, one image, two images and a
4-frame video of different lengths; sampling and stopping behave."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from neo_jax.infer import decode, generate, kv_cache, sampling
from neo_jax.model import layers
from neo_jax.model.model_config import ModelConfig
from neo_jax.model.neo import NEO
from testlib import model as mf


def _prompt(rng, cfg, parts):
  """A prompt dict from parts: ``("text", n)`` or ``("image", h, w)`` pixels."""
  ids, hw, pix = [], [], []
  for part in parts:
    if part[0] == "text":
      ids += [int(x) for x in rng.integers(0, 500, part[1])]
      hw += [(0, 0)] * part[1]
    else:
      img = rng.integers(0, 256, size=(part[1], part[2], 3), dtype=np.uint8)
      i, h, p = mf._image_block(img, cfg)  # pylint: disable=protected-access
      ids += i
      hw += h
      pix += [x for x, t in zip(p, i) if t == cfg.img_context_token_id]
  return {"input_ids": np.asarray(ids, np.int32), "token_hw": np.asarray(hw, np.int32),
          "pixel_values": np.asarray(pix, np.uint8).reshape(-1, 4, 768)}


def _prompts(cfg, seed=0):
  rng = np.random.default_rng(seed)
  video = [("text", 3)] + [p for _ in range(4) for p in (("text", 2), ("image", 32, 64))]
  return [
      _prompt(rng, cfg, [("text", 9)]),
      _prompt(rng, cfg, [("text", 3), ("image", 64, 96), ("text", 4)]),
      _prompt(rng, cfg, [("text", 2), ("image", 64, 64), ("text", 2), ("image", 32, 64),
                         ("text", 3)]),
      _prompt(rng, cfg, video + [("text", 2)]),
  ]


@pytest.fixture(scope="module")
def tiny():
  cfg = mf.tiny_config()
  return cfg, mf.init_params(cfg, seed=4), _prompts(cfg)


@pytest.mark.parametrize("unroll_layers", [True, False])
def test_cached_greedy_equals_uncached_token_for_token(tiny, unroll_layers):
  cfg, params, prompts = tiny
  assert len({len(p["input_ids"]) for p in prompts}) == 4
  banned = (cfg.img_start_token_id, cfg.img_context_token_id, cfg.img_end_token_id)
  steps = 8
  want, want_logits = generate.greedy_generate(NEO(cfg), params, prompts, max_new_tokens=steps,
                                               banned_ids=banned, return_logits=True)
  gen = decode.Generator(cfg, bucket=16, unroll_layers=unroll_layers)
  assert gen.unrolled == unroll_layers
  got, got_logits = gen.generate(params, prompts, max_new_tokens=steps, return_logits=True)
  assert got == want
  assert all(len(g) == steps for g in got)
  np.testing.assert_allclose(got_logits, want_logits, atol=1e-4, rtol=0)
  # The logits are not trivially equal (the rows differ, the steps differ).
  assert np.abs(np.diff(got_logits, axis=1)).max() > 1e-2


def test_prefill_embeds_every_visual_token_whatever_the_training_cap(tiny):
  """The prefill gathers the prompts' visual positions by their own count: a model
  config carrying a training cap ``max_visual_tokens`` below a prompt's visual tokens
  (which would make those rows NaN) still decodes like the uncached model without a
  cap, token for token."""
  cfg, params, prompts = tiny
  counts = [int((p["input_ids"] == cfg.img_context_token_id).sum()) for p in prompts]
  assert cfg.max_visual_tokens == 0 and max(counts) > 2
  banned = (cfg.img_start_token_id, cfg.img_context_token_id, cfg.img_end_token_id)
  want, want_logits = generate.greedy_generate(NEO(cfg), params, prompts, max_new_tokens=4,
                                               banned_ids=banned, return_logits=True)
  capped = ModelConfig.coerce(cfg).replace(max_visual_tokens=2)
  gen = decode.Generator(capped, bucket=16)
  batch, _ = gen.prompts_batch(prompts)
  slots = gen.visual_slots(batch)
  assert max(counts) <= slots <= batch["input_ids"].shape[1]
  got, got_logits = gen.generate(params, prompts, max_new_tokens=4, return_logits=True)
  assert got == want
  np.testing.assert_allclose(got_logits, want_logits, atol=1e-4, rtol=0)
  text_only, _ = gen.prompts_batch(prompts[:1])
  assert counts[0] == 0 and gen.visual_slots(text_only) >= 1


def test_stop_ids_end_rows_and_are_not_returned(tiny):
  cfg, params, prompts = tiny
  gen = decode.Generator(cfg, bucket=16)
  free = gen.generate(params, prompts, max_new_tokens=6)
  stop = free[1][2]       # row 1 stops before its third token
  got = gen.generate(params, prompts, max_new_tokens=6, stop_ids=[stop])
  assert got[1] == free[1][:free[1].index(stop)]
  for g, f in zip(got, free):
    assert g == (f[:f.index(stop)] if stop in f else f)


def test_image_tokens_are_never_generated(tiny):
  cfg, params, prompts = tiny
  # Make <IMG_CONTEXT> the most likely token everywhere: a large bias on its head row.
  p = jax.tree_util.tree_map(np.array, params)
  p["embed_tokens"]["embedding"][cfg.img_context_token_id] *= 50.0
  out = decode.Generator(cfg, bucket=16).generate(p, prompts[:1], max_new_tokens=4)
  banned = {cfg.img_start_token_id, cfg.img_context_token_id, cfg.img_end_token_id}
  assert not banned & set(out[0])


def test_sampling_is_reproducible_and_respects_top_k():
  logits = np.log(np.asarray([[0.5, 0.3, 0.15, 0.05]] * 2000, np.float32))
  key = jax.random.PRNGKey(3)
  cfg = sampling.SamplingConfig(temperature=1.0, top_k=2)
  a = np.asarray(sampling.choose(logits, key, cfg))
  b = np.asarray(sampling.choose(logits, key, cfg))
  np.testing.assert_array_equal(a, b)
  assert set(a) <= {0, 1}
  # The kept two keep their odds: 0.5 / 0.8 of the draws are token 0.
  assert abs((a == 0).mean() - 0.625) < 0.05
  top_p = np.asarray(sampling.choose(logits, key, sampling.SamplingConfig(1.0, top_p=0.6)))
  assert set(top_p) <= {0, 1}    # 0.5 < 0.6 needs token 1 too; 0.8 >= 0.6 stops there
  greedy = sampling.choose(logits[:3], key, sampling.SamplingConfig(banned_ids=(0,)))
  assert list(np.asarray(greedy)) == [1, 1, 1]
  with pytest.raises(ValueError, match="top_p"):
    sampling.SamplingConfig(top_p=0.0)


def test_cache_size_is_what_the_shapes_say():
  cfg = mf.tiny_config()
  layers = cfg.num_prebuffer_layers + cfg.num_llm_layers
  want = layers * 2 * 100 * cfg.num_kv_heads * 3 * cfg.head_dim * 4   # float32 k (2d) + v (d)
  assert kv_cache.cache_bytes(cfg, 2, 100) == want


def test_decoding_under_the_training_mesh_keeps_params_sharded(devices8):
  """data 2 x fsdp 2 x tensor 2: parameters stay in their training shards, the cache
  follows the activations' axes, and the tokens equal the one-device decode."""
  from neo_jax.configs import smoke  # pylint: disable=import-outside-toplevel
  from neo_jax.train import sharding, trainer  # pylint: disable=import-outside-toplevel
  c = smoke.get_config()
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  s8 = trainer.Setup(c, mesh=sharding.make_mesh(dict(c.mesh), devices=list(devices8.flat)))
  state = s8.init_state(0)
  sharded = [x for x in jax.tree_util.tree_leaves(state.params)
             if not x.sharding.is_fully_replicated]
  assert sharded, "the smoke mesh should shard some parameters"
  prompts = _prompts(c.model, seed=2)
  got = decode.Generator(c.model, mesh=s8.mesh, rules=s8.rules, bucket=16).generate(
      state.params, prompts, max_new_tokens=5)
  want = decode.Generator(c.model, bucket=16).generate(jax.device_get(state.params), prompts,
                                                       max_new_tokens=5)
  assert got == want


def test_unrolled_layers_forward_equals_the_scanned_stack(tiny):
  cfg, params, prompts = tiny
  gen = decode.Generator(cfg, bucket=16)
  batch, _ = gen.prompts_batch(prompts)
  args = (batch["input_ids"], batch["segment_ids"], batch["token_hw"], batch["pixel_values"])
  want = NEO(cfg).apply({"params": params}, *args)
  stacks = gen.cfg.stack_layers          # (the typed config)
  split = layers.unrolled_layer_params(params, stacks)
  for stack, n in stacks.items():
    assert sorted(split[stack]) == sorted(f"layers_{i}" for i in range(n))
    np.testing.assert_array_equal(
        split[stack][f"layers_{n - 1}"]["mlp"]["up_proj"]["kernel"],
        params[stack]["layers"]["mlp"]["up_proj"]["kernel"][n - 1])
  got = NEO(cfg, unrolled_layers=True).apply({"params": {**params, **split}}, *args)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
  # The unrolled cache holds the stacked one's entries, layer by layer.
  shapes = kv_cache.cache_shapes(cfg, 2, 32)
  flat = kv_cache.cache_shapes(cfg, 2, 32, unrolled=True)
  for stack, n in stacks.items():
    for name in ("key", "value"):
      s = shapes[stack]["layers"]["self_attn"][name]
      assert s.shape[0] == n
      assert all(flat[stack][f"layers_{i}"]["self_attn"][name].shape == s.shape[1:]
                 for i in range(n))


def test_greedy_is_argmax_with_ties_infinities_and_nans():
  rng = np.random.default_rng(0)
  logits = rng.integers(-3, 4, (64, 257)).astype(np.float32)   # many ties per row
  logits[5] = -np.inf
  logits[6, [10, 200]] = np.inf
  logits[7, [30, 40]] = np.nan
  logits[8, 0] = np.nan
  got = np.asarray(sampling.greedy(logits))
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, np.argmax(logits, axis=-1))
  assert got[5] == 0 and got[6] == 10 and got[7] == 30 and got[8] == 0


def test_default_unrolling_is_cpu_and_bounded_by_the_copy(tiny, monkeypatch):
  cfg, params, _ = tiny
  stacks = decode.Generator(cfg).cfg.stack_layers
  want = sum(np.asarray(x).nbytes for k in stacks
             for x in jax.tree_util.tree_leaves(params[k]))
  assert decode.decoder_bytes(decode.Generator(cfg).cfg) == want
  assert decode.Generator(cfg).unrolled            # CPU, a small copy
  monkeypatch.setattr(decode, "UNROLL_MAX_BYTES", want - 1)
  assert not decode.Generator(cfg).unrolled
  assert decode.Generator(cfg, unroll_layers=True).unrolled
