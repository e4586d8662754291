"""The released presets initialise abstractly, with the parameter counts of docs/design.md §1.6.

``jax.eval_shape(model.init)`` builds the NEO-2B / NEO-9B parameter trees without
allocating them; their sizes are compared with a count written here from the
design's table (docs/design.md §1.2, §1.5, §1.6), not from the model code.
"""

import math

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

from neo_jax.model import config as config_lib
from neo_jax.model import neo

# docs/design.md §1.6: (hidden, inter, LLM layers, pre-Buffer, heads q, heads kv, d, vocab, tied).
SPEC = {
    "neo_2b": (2048, 6144, 28, 12, 16, 8, 128, 151936, True),
    "neo_9b": (4096, 12288, 36, 6, 32, 8, 128, 151936, False),
}
VISION_HIDDEN, PATCH, DOWN = 1024, 16, 2


def qwen3_layer_params(d_model, inter, hq, hkv, d):
  """A plain Qwen3 decoder layer: q/k/v/o, q_norm/k_norm, two RMSNorms, SwiGLU."""
  attn = d_model * hq * d + 2 * d_model * hkv * d + hq * d * d_model + 2 * d
  return attn + 2 * d_model + 3 * d_model * inter


def native_layer_params(d_model, inter, hq, hkv, d):
  """A native primitive: a Qwen3 layer + q_proj_hw, k_proj_hw and four d/2 norms (§1.2)."""
  return (qwen3_layer_params(d_model, inter, hq, hkv, d) + d_model * hq * d + d_model * hkv * d
          + 4 * (d // 2))


def spec_counts(name):
  """Parameter counts implied by docs/design.md §1.6 (see BUILD_NOTES.md §1b)."""
  d_model, inter, n_llm, n_pre, hq, hkv, d, vocab, tied = SPEC[name]
  embed = vocab * d_model
  head = 0 if tied else vocab * d_model
  vision = (3 * PATCH * PATCH * VISION_HIDDEN + VISION_HIDDEN
            + VISION_HIDDEN * DOWN * DOWN * d_model + d_model)
  neo_total = (embed + head + vision + d_model
               + (n_llm + n_pre) * native_layer_params(d_model, inter, hq, hkv, d))
  qwen3_total = embed + head + d_model + n_llm * qwen3_layer_params(d_model, inter, hq, hkv, d)
  return dict(neo=neo_total, qwen3=qwen3_total, vision=vision,
              native_layer=native_layer_params(d_model, inter, hq, hkv, d),
              qwen3_layer=qwen3_layer_params(d_model, inter, hq, hkv, d))


def abstract_params(name):
  cfg = config_lib.get_model_config(name)
  model = neo.NEO(cfg)
  args = (jax.ShapeDtypeStruct((1, 8), jnp.int32),) * 2 + (
      jax.ShapeDtypeStruct((1, 8, 2), jnp.int32),
      jax.ShapeDtypeStruct((1, 8, 4, 3 * PATCH * PATCH), jnp.uint8))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)
  return cfg, nn.unbox(shapes)["params"]


def count(tree):
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name", ["neo_2b", "neo_9b"])
def test_preset_initialises_abstractly_with_spec_count(name):
  """eval_shape works (ShapeDtypeStructs, no arrays) and the total, the vision part and
  the per-layer size equal the independent docs/design.md §1.6 formula."""
  cfg, params = abstract_params(name)
  leaves = jax.tree_util.tree_leaves(params)
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert all(x.dtype == jnp.float32 for x in leaves)
  want = spec_counts(name)
  assert count(params) == want["neo"]
  assert count(params["vision_model"]) == want["vision"]
  n_layers = cfg.num_llm_layers + cfg.num_prebuffer_layers
  assert count(params["llm"]) + count(params["prebuffer"]) == n_layers * want["native_layer"]
  assert ("lm_head" in params) == (not SPEC[name][-1])


def test_spec_counts_match_the_published_sizes():
  """The formula reproduces the published sizes: Qwen3-1.7B = 1.72B unique parameters
  (2.03B when its tied lm_head is counted again, as the Hub's checkpoint size does),
  Qwen3-8B = 8.19B; the NEO names match the counts without embedding / LM-head
  tables (2.27B for "NEO-2.2B", 9.00B for "NEO-9B"); a native layer is about 10%
  (11-13%) bigger than a Qwen3 layer (§1.2)."""
  c2, c9 = spec_counts("neo_2b"), spec_counts("neo_9b")
  vocab_rows = lambda name: SPEC[name][7] * SPEC[name][0]
  assert round(c2["qwen3"] / 1e9, 2) == 1.72
  assert round((c2["qwen3"] + vocab_rows("neo_2b")) / 1e9, 2) == 2.03
  assert round(c9["qwen3"] / 1e9, 2) == 8.19
  assert 2.2e9 < c2["neo"] - vocab_rows("neo_2b") < 2.3e9
  assert 8.95e9 < c9["neo"] - 2 * vocab_rows("neo_9b") < 9.05e9
  for c in (c2, c9):
    assert 1.05 < c["native_layer"] / c["qwen3_layer"] < 1.15
