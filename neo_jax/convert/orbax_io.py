"""Our parameters as an Orbax checkpoint, with the model config beside them.

Layout of a checkpoint directory ``path``: an Orbax (v1 API, OCDBT) PyTree
checkpoint of the parameter tree (``vision_model/...``, ``embed_tokens/...``,
``prebuffer/layers/...``, ``llm/layers/...``, ``norm/...``, ``lm_head/...``;
plain arrays, no ``nn.Partitioned`` boxes), plus ``model_config.json``: our
model config (``neo_jax.model.config`` fields), so that a checkpoint is
self-describing and export needs no preset.

Writing is incremental (``ParamWriter.put`` one leaf at a time, Orbax partial
save, finalised on ``close``) and reading is per leaf (``ParamReader.get``,
Orbax partial load), so converting a 9B model never holds the whole tree.
The trainer uses ``save_params`` / ``load_params`` (whole trees, optionally
restored straight into sharded ``jax.Array``s).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Iterator

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from orbax.checkpoint import v1 as ocp

from neo_jax.core import paths
from neo_jax.model import config as config_lib

CONFIG_FILE = "model_config.json"
Path = tuple[str, ...]


def save_config(path: str, cfg: ml_collections.ConfigDict) -> None:
  """Writes ``cfg`` as ``path/model_config.json``."""
  paths.write_text(paths.join(path, CONFIG_FILE),
                   json.dumps(cfg.to_dict(), indent=2, sort_keys=True))


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


def _nest(path: Path, value: Any) -> dict:
  for name in reversed(path):
    value = {name: value}
  return value


def flatten(tree: Any, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
  """``(path, leaf)`` pairs of a nested dict, depth first in key order."""
  if isinstance(tree, dict) or hasattr(tree, "items"):
    for k in sorted(tree):
      yield from flatten(tree[k], prefix + (str(k),))
  else:
    yield prefix, tree


def unflatten(pairs) -> dict:
  """Nested dict from ``(path, leaf)`` pairs."""
  out: dict = {}
  for path, v in pairs:
    d = out
    for name in path[:-1]:
      d = d.setdefault(name, {})
    d[path[-1]] = v
  return out


class ParamWriter:
  """Writes a parameter checkpoint leaf by leaf.

  Args:
    path: checkpoint directory (must not exist unless ``overwrite``).
    config: model config written as ``model_config.json`` on ``close``.
    overwrite: delete an existing ``path`` first.
    compress: ZSTD-compress the arrays (Orbax's default). Off by default: on
      float weights it saves ~20% of the disk at twice the write and read time
      (measured: a 512 MB bfloat16 leaf, 10.8 s vs 5.2 s to write).

  A URL destination (``gs://...``) is written into a local temporary folder and
  uploaded on ``close``: Orbax's partial saves (one leaf at a time, the point of this
  writer) need a snapshot of the checkpoint that its object-store path does not
  support (orbax-checkpoint 0.12.8: "Snapshot is not supported for
  CommitFileTemporaryPath"). The temporary folder needs the checkpoint's size of
  local disk, outside the current directory.

  Raises:
    FileExistsError: ``path`` exists and ``overwrite`` is False.
  """

  def __init__(self, path: str, config: ml_collections.ConfigDict | None = None,
               overwrite: bool = False, compress: bool = False):
    final = paths.resolve(path)
    if final.exists():
      if not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True (--overwrite) to replace it.")
      final.rmtree()
    self.final = final
    self._staging = tempfile.mkdtemp(prefix="neo_jax_params_") if paths.is_url(path) else None
    self.path = paths.resolve(os.path.join(self._staging, "ckpt")) if self._staging else final
    self.config, self.compress = config, compress
    self._written: set[Path] = set()

  def _save(self, tree: dict) -> None:
    ctx = ocp.Context()
    ctx.array.saving.use_compression = self.compress
    with ctx:
      ocp.partial.save(self.path, tree)

  def put(self, path: Path, array: Any) -> None:
    """Adds one leaf (numpy or jax array); each path once."""
    if path in self._written:
      raise ValueError(f"Parameter {'/'.join(path)} written twice.")
    self._written.add(path)
    self._save(_nest(path, np.asarray(array)))

  def put_tree(self, tree: Any) -> None:
    """Adds a whole (sub)tree in one Orbax write."""
    pairs = [(p, np.asarray(v)) for p, v in flatten(tree)]
    for p, _ in pairs:
      if p in self._written:
        raise ValueError(f"Parameter {'/'.join(p)} written twice.")
      self._written.add(p)
    self._save(unflatten(pairs))

  def close(self) -> None:
    """Finalises the Orbax checkpoint and writes the config."""
    if not self._written:
      raise ValueError(f"No parameters written to {self.path}.")
    ocp.partial.finalize(self.path)
    if self.config is not None:
      save_config(self.path, self.config)
    if self._staging:
      paths.copy_tree(self.path, self.final)
      shutil.rmtree(self._staging, ignore_errors=True)


class ParamReader:
  """Reads a parameter checkpoint leaf by leaf.

  Args:
    path: checkpoint directory written by ``ParamWriter`` / ``save_params``.

  Raises:
    FileNotFoundError: ``path`` is not an Orbax checkpoint.
  """

  def __init__(self, path: str):
    self.path = paths.resolve(path)
    if not self.path.exists():
      raise FileNotFoundError(f"Checkpoint directory {self.path} does not exist.")
    self._meta = dict(flatten(ocp.metadata(self.path).metadata))

  def paths(self) -> list[Path]:
    return list(self._meta)

  def __contains__(self, path: Path) -> bool:
    return tuple(path) in self._meta

  def shape(self, path: Path) -> tuple[int, ...]:
    return tuple(self._meta[self._check(path)].shape)

  def dtype(self, path: Path) -> np.dtype:
    return np.dtype(self._meta[self._check(path)].dtype)

  def get(self, path: Path) -> np.ndarray:
    """Reads one leaf as a numpy array in its stored dtype."""
    path = self._check(path)
    ctx = ocp.Context()
    ctx.pytree.loading.partial_load = True
    with ctx:
      tree = ocp.load(self.path, _nest(path, self._meta[path]))
    for name in path:
      tree = tree[name]
    return np.asarray(tree)

  def _check(self, path: Path) -> Path:
    path = tuple(path)
    if path not in self._meta:
      raise KeyError(f"Parameter {'/'.join(path)} not in checkpoint {self.path}.")
    return path


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
