"""The KV cache of cached decoding: a ``"cache"`` collection of static shape.

Per decoder stack (``prebuffer``, ``llm``) and layer (stacked on axis 0, as the
parameters under ``nn.scan``; or one subtree per layer, ``unrolled``): ``key [layers,
B, L, Hkv, 2 * head_dim]`` (after the norms and Native-RoPE, the [T | H | W] layout the
attention consumes) and ``value [layers, B, L, Hkv, head_dim]``. ``L`` is static
(prompt bucket + tokens to generate), so one compiled decode step serves every step;
each row keeps its own length (``cache_index``), so prompts of different lengths share
the cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from neo_jax.model.model_config import ModelConfig


def cache_shapes(cfg: ModelConfig, batch: int, length: int, dtype=None, *,
                 unrolled: bool = False) -> dict:
  """``{stack: {"layers": {"self_attn": {"key": ShapeDtypeStruct, "value": ...}}}}``.

  Args:
    cfg: model config (a ``ModelConfig``; a model ``ConfigDict`` is converted): the
      stacks and their layers (``ModelConfig.stack_layers``, as ``NEO`` builds them),
      ``num_kv_heads``, ``head_dim``; batch: rows B; length: cache positions L;
    dtype: storage dtype (default: the compute dtype ``cfg.dtype``).
    unrolled: the layout of ``NEO(unrolled_layers=True)``: ``{stack: {"layers_i":
      {"self_attn": {"key" [B, L, Hkv, 2d], "value" [B, L, Hkv, d]}}}}``, one
      subtree per layer instead of a stacked leading axis.
  """
  cfg = ModelConfig.coerce(cfg)
  dtype = jnp.dtype(dtype or cfg.dtype)
  hkv, d = cfg.num_kv_heads, cfg.head_dim

  def one(lead):
    return {"self_attn": {
        "key": jax.ShapeDtypeStruct(lead + (batch, length, hkv, 2 * d), dtype),
        "value": jax.ShapeDtypeStruct(lead + (batch, length, hkv, d), dtype)}}

  if unrolled:
    return {name: {f"layers_{i}": one(()) for i in range(n)}
            for name, n in cfg.stack_layers.items()}
  return {name: {"layers": one((n,))} for name, n in cfg.stack_layers.items()}


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None, *,
               unrolled: bool = False) -> dict:
  """A zero cache of ``cache_shapes`` (the ``"cache"`` collection to apply with)."""
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                cache_shapes(cfg, batch, length, dtype, unrolled=unrolled))


def cache_bytes(cfg: ModelConfig, batch: int, length: int, dtype=None) -> int:
  """Bytes of the cache (memory planning; the same in either layout)."""
  return sum(s.size * s.dtype.itemsize
             for s in jax.tree_util.tree_leaves(cache_shapes(cfg, batch, length, dtype)))
