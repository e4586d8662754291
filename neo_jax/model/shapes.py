"""The parameter shapes of a model config, read from the model itself.

``jax.eval_shape`` of ``NEO.init`` (no memory, no FLOPs) is the one source of every
parameter's shape: the conversion table (``convert/param_mapping.py``) and the FLOP
count (``train/flops.py``) read them here instead of writing them out again, so a
change to a Flax module changes them all.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from neo_jax.core.batch import batch_shapes
from neo_jax.model.model_config import ModelConfig
from neo_jax.model.neo import NEO

Path = tuple[str, ...]
MODEL_INPUTS = ("input_ids", "segment_ids", "token_hw", "pixel_values")  # NEO.__call__'s


def dummy_inputs(cfg: ModelConfig, seq_len: int = 8) -> list[jax.Array]:
  """Zero ``MODEL_INPUTS`` of one ``[1, seq_len]`` row (``core/batch.py`` shapes), enough
  to initialise the model (the parameters do not depend on them)."""
  shapes = batch_shapes(1, seq_len, cfg.patch_size)
  return [jnp.zeros(*shapes[k]) for k in MODEL_INPUTS]


def abstract_params(model: NEO) -> Any:
  """Boxed (``nn.LogicallyPartitioned``) abstract parameters of ``model``: shapes,
  dtypes and logical axes, no memory."""
  return jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), *dummy_inputs(model.config)))["params"]


@functools.lru_cache(maxsize=32)
def _param_shapes(cfg: ModelConfig) -> tuple[tuple[Path, tuple[int, ...]], ...]:
  boxed = lambda x: isinstance(x, nn.meta.AxisMetadata)
  flat = jax.tree_util.tree_flatten_with_path(abstract_params(NEO(cfg)), is_leaf=boxed)[0]
  return tuple((tuple(k.key for k in path), tuple((leaf.value if boxed(leaf) else leaf).shape))
               for path, leaf in flat)


def param_shapes(cfg: ModelConfig) -> dict[Path, tuple[int, ...]]:
  """``{path: shape}`` of every parameter of ``NEO(cfg)`` (``("llm", "layers", "mlp",
  "up_proj", "kernel")``; stacked leaves carry the layer axis first), in the order of
  the parameter tree.

  Only the fields that size parameters matter: the compute path is fixed to the dense
  attention without remat for the trace, and results are cached per config.
  """
  cfg = ModelConfig.coerce(cfg).replace(
      attention_impl="xla", remat_policy="none", max_visual_tokens=0, max_sample_tokens=0,
      max_supervised_tokens=0, dtype="float32")
  return dict(_param_shapes(cfg))
