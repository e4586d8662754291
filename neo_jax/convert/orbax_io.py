"""Our parameters as an Orbax checkpoint, with the model config beside them.

Layout of a checkpoint directory ``path``: an Orbax (v1 API, OCDBT, zarr3) PyTree
checkpoint of the parameter tree (``vision_model/...``, ``embed_tokens/...``,
``prebuffer/layers/...``, ``llm/layers/...``, ``norm/...``, ``lm_head/...``;
plain arrays, no ``nn.Partitioned`` boxes), plus ``model_config.json``: our
model config (``neo_jax.model.config`` fields), so that a checkpoint is
self-describing and export needs no preset.

Writing and reading are piece by piece (``orbax_arrays.ParamWriter`` /
``ParamReader``: one layer or one block of vocabulary rows at a time, through
tensorstore), so converting a 9B model holds a few pieces, never a whole stacked
leaf. The trainer uses ``save_params`` (the same writer) / ``load_params`` (Orbax's
own restore of the whole tree, optionally straight into sharded ``jax.Array``s) /
``load_config``.
"""

from __future__ import annotations

import json
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from orbax.checkpoint import v1 as ocp

from neo_jax.convert.leaves import flatten, unflatten
from neo_jax.convert.orbax_arrays import CONFIG_FILE, ParamReader, ParamWriter, save_config
from neo_jax.core import paths
from neo_jax.model import config as config_lib

__all__ = ["CONFIG_FILE", "ParamReader", "ParamWriter", "flatten", "load_config", "load_params",
           "save_config", "save_params", "unflatten"]


def load_config(path: str) -> ml_collections.ConfigDict:
  """Reads ``path/model_config.json`` into a validated model config.

  Fields missing from the file (older checkpoints) take the base schema's
  values; unknown fields raise (``get_model_config``).

  Raises:
    FileNotFoundError: the file is missing.
  """
  p = paths.join(path, CONFIG_FILE)
  if not paths.exists(p):
    raise FileNotFoundError(f"{p} is missing: {path} is not a neo_jax parameter checkpoint.")
  fields = json.loads(paths.read_text(p))
  return config_lib.get_model_config("neo_2b", **fields)


def save_params(path: str, params: Any, config: ml_collections.ConfigDict | None = None,
                overwrite: bool = False, compress: bool = False) -> None:
  """Saves a parameter tree (boxed ``nn.Partitioned`` leaves are unboxed).

  Args:
    path: checkpoint directory.
    params: nested dict of arrays (``variables['params']``).
    config: model config, written beside as ``model_config.json``.
    overwrite: replace an existing directory.
    compress: ZSTD-compress the arrays (see ``ParamWriter``).
  """
  params = jax.device_get(nn.meta.unbox(params))
  w = ParamWriter(path, config, overwrite=overwrite, compress=compress)
  w.put_tree(params)
  w.close()


def load_params(path: str, target: Any = None) -> dict:
  """Loads a parameter tree.

  Args:
    path: checkpoint directory.
    target: optional tree of ``jax.ShapeDtypeStruct`` (with ``sharding``) of
      the same structure (e.g. ``jax.eval_shape(model.init, ...)`` unboxed,
      with shardings attached): leaves are restored as ``jax.Array`` with those
      shardings and dtypes. Without it, numpy arrays in the stored dtype.

  Returns:
    Nested dict of arrays.

  Raises:
    FileNotFoundError: ``path`` does not exist.
  """
  path = paths.resolve(path)
  if not path.exists():
    raise FileNotFoundError(f"Checkpoint directory {path} does not exist.")
  if target is None:
    return ocp.load(path)
  return ocp.load(path, nn.meta.unbox(target))
