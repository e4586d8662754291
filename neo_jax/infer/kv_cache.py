"""The KV cache of cached decoding: a ``"cache"`` collection of static shape.

Per decoder stack (``prebuffer``, ``llm``) and layer (stacked on axis 0, as the
parameters under ``nn.scan``): ``key [layers, B, L, Hkv, 2 * head_dim]`` (after the
norms and Native-RoPE, the [T | H | W] layout the attention consumes) and
``value [layers, B, L, Hkv, head_dim]``. ``L`` is static (prompt bucket + tokens
to generate), so one compiled decode step serves every step; each row keeps its own
length (``cache_index``), so prompts of different lengths share the cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from neo_jax.model.model_config import ModelConfig


def cache_shapes(cfg: ModelConfig, batch: int, length: int, dtype=None) -> dict:
  """``{stack: {"layers": {"self_attn": {"key": ShapeDtypeStruct, "value": ...}}}}``.

  Args:
    cfg: model config (a ``ModelConfig``; a model ``ConfigDict`` is converted): the
      stacks and their layers (``ModelConfig.stack_layers``, as ``NEO`` builds them),
      ``num_kv_heads``, ``head_dim``; batch: rows B; length: cache positions L;
    dtype: storage dtype (default: the compute dtype ``cfg.dtype``).
  """
  cfg = ModelConfig.coerce(cfg)
  dtype = jnp.dtype(dtype or cfg.dtype)
  hkv, d = cfg.num_kv_heads, cfg.head_dim
  out = {}
  for name, n in cfg.stack_layers.items():
    out[name] = {"layers": {"self_attn": {
        "key": jax.ShapeDtypeStruct((n, batch, length, hkv, 2 * d), dtype),
        "value": jax.ShapeDtypeStruct((n, batch, length, hkv, d), dtype)}}}
  return out


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None) -> dict:
  """A zero cache of ``cache_shapes`` (the ``"cache"`` collection to apply with)."""
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                cache_shapes(cfg, batch, length, dtype))


def cache_bytes(cfg: ModelConfig, batch: int, length: int, dtype=None) -> int:
  """Bytes of the cache (memory planning)."""
  return sum(s.size * s.dtype.itemsize
             for s in jax.tree_util.tree_leaves(cache_shapes(cfg, batch, length, dtype)))
