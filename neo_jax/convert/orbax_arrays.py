"""Our Orbax parameter checkpoints, written and read piece by piece through tensorstore.

Orbax saves and restores whole arrays: a 9B model's stacked ``mlp`` leaf
(36 x 4096 x 12288) is 3.6 GB in bfloat16, and Orbax's write path holds it, a
staging copy and its encoded chunk at once. Here the same checkpoint is written
one piece (``param_mapping.piece_slices``: a layer, a block of vocabulary rows)
at a time, and read back the same way:

* Arrays: tensorstore ``zarr3`` arrays in the checkpoint item's OCDBT key-value
  store, named and encoded as Orbax 0.12 does (``llm.layers.mlp.up_proj.kernel``;
  ``sharding_indexed`` codec, little-endian ``bytes``, ``crc32c`` index, optional
  ``zstd``; OCDBT config ``max_inline_value_bytes`` 1024, ``manifest_kind``
  single; every chunk stored, zeros included), with one chunk per piece: the layout
  Orbax itself writes for an array sharded over its leading axis.
* Metadata: written last, by Orbax: ``close`` saves a skeleton of the same tree
  (one value per leaf, same dtypes) with ``ocp.partial.save`` into a temporary
  folder and copies its metadata files (``_CHECKPOINT_METADATA``, the
  ``orbax.checkpoint`` indicator, ``commit_success.txt``, ``<item>/_METADATA``:
  none of them depends on the arrays' shapes) beside the arrays. Until then the
  folder is not a loadable checkpoint, so an interrupted conversion cannot be
  mistaken for a finished one.

The result is an ordinary Orbax checkpoint: ``ocp.load`` / ``ocp.metadata`` (the
trainer's ``checkpoint.init_from``, ``neo_jax.infer``) read it unchanged.
``tests/test_convert_stream.py`` checks the file set and metadata against
Orbax's own save.
"""

from __future__ import annotations

import collections
import json
import math
import os
import tempfile

import numpy as np
import tensorstore as ts
from orbax.checkpoint import v1 as ocp
from orbax.checkpoint.serialization import ts_utils

from neo_jax.convert import param_mapping as pm
from neo_jax.convert.leaves import flatten, unflatten
from neo_jax.core import paths

Path = tuple[str, ...]
CONFIG_FILE = "model_config.json"
ITEM = "state"  # the item folder ``ocp.partial.save`` writes the tree into
_OCDBT_STORE = ("manifest.ocdbt", "d/", "ocdbt.process_")
_TARGET_FILE_BYTES = {"local": 2 ** 31, "gcs": 400 * 2 ** 20}  # Orbax's OCDBT data file sizes


def _kvstore(root: str, *, write: bool) -> dict:
  """OCDBT key-value store spec of the item folder ``root`` (local path or gs:// URL)."""
  if root.startswith("gs://"):
    bucket, _, key = root[len("gs://"):].partition("/")
    base, target = {"driver": "gcs", "bucket": bucket, "path": key.rstrip("/") + "/"}, "gcs"
  else:
    base, target = {"driver": "file", "path": root.rstrip("/") + "/"}, "local"
  spec = {"driver": "ocdbt", "base": base, "cache_pool": "cache_pool#ocdbt"}
  if write:
    spec.update(config={"max_inline_value_bytes": 1024, "max_decoded_node_bytes": 100_000_000,
                        "manifest_kind": "single"},
                target_data_file_size=_TARGET_FILE_BYTES[target])
  return spec


def _zarr3_metadata(shape: tuple[int, ...], chunk: tuple[int, ...], dtype: np.dtype,
                    compress: bool) -> dict:
  codecs = [{"name": "bytes", "configuration": {"endian": "little"}}]
  if compress:
    codecs.append({"name": "zstd", "configuration": {"level": 3}})
  return {
      "shape": list(shape), "data_type": np.dtype(dtype).name, "fill_value": 0,
      "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk)}},
      "codecs": [{"name": "sharding_indexed", "configuration": {
          "chunk_shape": list(chunk), "codecs": codecs, "index_location": "end",
          "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                           {"name": "crc32c"}]}}],
  }


def param_name(path: Path) -> str:
  """Orbax's name of a leaf's array: the keys joined by dots."""
  return ".".join(path)


class ParamWriter:
  """Writes a parameter checkpoint piece by piece.

  Use ``write(path, shape, index, array)`` for every piece of every leaf (or
  ``put(path, array)`` for a whole leaf), then ``close()``. Tensorstore commits a
  piece in its own threads while the caller prepares the next; ``write`` waits
  while more than ``in_flight_bytes`` are uncommitted (always allowing one piece).

  Args:
    path: checkpoint directory (local or ``gs://``; must not exist unless
      ``overwrite``).
    config: model config written as ``model_config.json`` on ``close``.
    overwrite: delete an existing ``path`` first.
    compress: ZSTD-compress the arrays. Off by default: on float weights it saves
      ~20% of the disk at twice the write and read time.
    max_in_flight: pieces being committed at once.
    in_flight_bytes: bytes of pieces being committed at once (256 MiB: two
      bfloat16 layers of a 9B ``mlp``, one in float32).

  Raises:
    FileExistsError: ``path`` exists and ``overwrite`` is False.
  """

  def __init__(self, path: str, config=None, overwrite: bool = False, compress: bool = False,
               max_in_flight: int = 2, in_flight_bytes: int = 256 * 2 ** 20):
    final = paths.resolve(path)
    if final.exists():
      if not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True (--overwrite) to replace it.")
      final.rmtree()
    self.path = final
    self.config, self.compress = config, compress
    self.max_in_flight, self.in_flight_bytes = max_in_flight, in_flight_bytes
    item = paths.join(os.fspath(final), ITEM)
    if not paths.is_url(item):
      os.makedirs(item, exist_ok=True)
    self._kv = _kvstore(item, write=True)
    # Orbax's context, with a smaller B-tree node cache: a writer reads back only the
    # few nodes it is committing to (Orbax's 100 MB is for restoring big trees).
    self._ctx = ts.Context(dict(ts_utils.get_ts_context(use_ocdbt=True).spec.to_json(),
                                **{"cache_pool#ocdbt": {"total_bytes_limit": 8_000_000}}))
    self._arrays: dict[Path, ts.TensorStore] = {}
    self._leaves: dict[Path, tuple[tuple[int, ...], np.dtype]] = {}
    self._filled: dict[Path, int] = {}
    self._done: set[tuple[Path, tuple[int, ...]]] = set()
    self._pending: collections.deque = collections.deque()

  def _open(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> ts.TensorStore:
    if path in self._leaves:
      raise ValueError(f"Parameter {'/'.join(path)} written twice.")
    chunk = tuple(max(1, s.stop - s.start) for s in pm.piece_slices(path, shape)[0])
    spec = {"driver": "zarr3", "kvstore": dict(self._kv, path=param_name(path)),
            "metadata": _zarr3_metadata(shape, chunk, dtype, self.compress),
            "store_data_equal_to_fill_value": True,
            "recheck_cached_data": False, "recheck_cached_metadata": False}
    arr = ts.open(spec, create=True, context=self._ctx).result()
    self._leaves[path], self._filled[path] = (tuple(shape), np.dtype(dtype)), 0
    self._arrays[path] = arr
    return arr

  def write(self, path: Path, shape: tuple[int, ...], index: tuple[slice, ...],
            array: np.ndarray) -> None:
    """Writes ``leaf[index] = array`` of the leaf ``path`` of full ``shape``.

    Raises:
      ValueError: the piece was written before, or its shape / dtype does not fit.
    """
    path, shape = tuple(path), tuple(shape)
    array = np.asarray(array)
    arr = self._arrays[path] if path in self._arrays else self._open(path, shape, array.dtype)
    want_shape, want_dtype = self._leaves[path]
    starts = tuple(s.start for s in index)
    if shape != want_shape or array.dtype != want_dtype or (path, starts) in self._done:
      raise ValueError(f"Piece {starts} of {'/'.join(path)} ({array.dtype}) written twice or "
                       f"does not fit the leaf {want_shape} {want_dtype}.")
    if array.shape != tuple(s.stop - s.start for s in index):
      raise ValueError(f"Piece of {'/'.join(path)}: array {array.shape} for index {index}.")
    self._done.add((path, starts))
    self._filled[path] += array.size
    self._pending.append((arr[index].write(np.ascontiguousarray(array)), array.nbytes))
    while len(self._pending) > 1 and (len(self._pending) > self.max_in_flight or
                                      sum(n for _, n in self._pending) > self.in_flight_bytes):
      self._pending.popleft()[0].result()

  def put(self, path: Path, array) -> None:
    """Writes a whole leaf (numpy or jax array), piece by piece."""
    array = np.asarray(array)
    for index in pm.piece_slices(tuple(path), array.shape):
      self.write(path, array.shape, index, array[index])

  def put_tree(self, tree) -> None:
    """Writes every leaf of a nested dict."""
    for p, v in flatten(tree):
      self.put(p, v)

  def close(self) -> None:
    """Waits for the writes, checks every leaf is complete, writes Orbax's metadata
    and the config.

    Raises:
      ValueError: nothing was written, or a leaf's pieces do not cover it.
    """
    while self._pending:
      self._pending.popleft()[0].result()
    if not self._leaves:
      raise ValueError(f"No parameters written to {self.path}.")
    for path, (shape, _) in self._leaves.items():
      if self._filled[path] != math.prod(shape):
        raise ValueError(f"Parameter {'/'.join(path)}: {self._filled[path]} of "
                         f"{math.prod(shape)} values written.")
    self._arrays.clear()
    _write_orbax_metadata(os.fspath(self.path), self._leaves)
    if self.config is not None:
      save_config(os.fspath(self.path), self.config)


def save_config(path: str, cfg) -> None:
  """Writes the model config ``cfg`` as ``path/model_config.json``."""
  paths.write_text(paths.join(path, CONFIG_FILE),
                   json.dumps(cfg.to_dict(), indent=2, sort_keys=True))


def _write_orbax_metadata(dst: str, leaves: dict[Path, tuple[tuple[int, ...], np.dtype]]) -> None:
  """Copies the metadata files of Orbax's save of a skeleton of the same tree to ``dst``."""
  tree = unflatten((p, np.zeros((1,) * len(shape), dtype)) for p, (shape, dtype) in leaves.items())
  with tempfile.TemporaryDirectory(prefix="neo_jax_skeleton_") as tmp:
    sk = os.path.join(tmp, "ckpt")
    ocp.partial.save(sk, tree)
    ocp.partial.finalize(sk)
    files = sorted(os.path.relpath(os.path.join(d, f), sk) for d, _, fs in os.walk(sk) for f in fs)
    meta = [f for f in files if not (f.startswith(ITEM + "/") and
                                     f[len(ITEM) + 1:].startswith(_OCDBT_STORE))]
    if f"{ITEM}/_METADATA" not in meta:
      raise RuntimeError(f"Orbax's save layout changed: no {ITEM}/_METADATA in {files}.")
    last = ("_CHECKPOINT_METADATA", "orbax.checkpoint")  # what makes it a checkpoint: last
    for rel in sorted(meta, key=lambda f: (f in last, last.index(f) if f in last else 0, f)):
      with open(os.path.join(sk, rel), "rb") as f:
        data = f.read()
      out = paths.resolve(paths.join(dst, rel))
      if not paths.is_url(os.fspath(out)):
        out.parent.mkdir(parents=True, exist_ok=True)
      out.write_bytes(data)


def _item_dir(path: str) -> str:
  """The checkpoint's PyTree item folder: ``state`` (``ocp.partial.save``), else the one
  subfolder with an Orbax ``_METADATA`` file."""
  if paths.exists(paths.join(path, ITEM, "_METADATA")):
    return paths.join(path, ITEM)
  items = [os.fspath(p) for p in paths.resolve(path).iterdir() if (p / "_METADATA").exists()]
  if len(items) != 1:
    raise FileNotFoundError(f"{path}: expected one Orbax PyTree item folder, found {items}.")
  return items[0]


class ParamReader:
  """Reads a parameter checkpoint (ours or any Orbax PyTree checkpoint of arrays)
  piece by piece.

  Args:
    path: checkpoint directory written by ``ParamWriter`` / ``save_params`` (or an
      older Orbax-written one: any chunking reads, but a piece of an array stored
      as one chunk reads that whole chunk), or a training checkpoint
      (``<workdir>/checkpoints/<step>``) with ``prefix=("params",)``.
    prefix: read only the leaves under this path of the tree (the parameters of a
      train state), named without it.

  Raises:
    FileNotFoundError: ``path`` is not an Orbax checkpoint, or has nothing under
      ``prefix``.
  """

  def __init__(self, path: str, prefix: Path = ()):
    self.path = paths.resolve(path)
    if not self.path.exists():
      raise FileNotFoundError(f"Checkpoint directory {self.path} does not exist.")
    self._prefix = tuple(prefix)
    n = len(self._prefix)
    self._meta = {p[n:]: m for p, m in flatten(ocp.metadata(self.path).metadata)
                  if tuple(p[:n]) == self._prefix}
    if not self._meta:
      raise FileNotFoundError(f"{self.path} holds no arrays under {'/'.join(prefix)}.")
    item = _item_dir(os.fspath(self.path))
    flags = json.loads(paths.read_text(paths.join(item, "_METADATA")))
    self._zarr = "zarr3" if flags.get("use_zarr3", True) else "zarr"
    self._ocdbt = flags.get("use_ocdbt", True)
    self._item = item
    self._ctx = ts_utils.get_ts_context(use_ocdbt=self._ocdbt)
    self._arrays: dict[Path, ts.TensorStore] = {}

  def paths(self) -> list[Path]:
    return list(self._meta)

  def __contains__(self, path: Path) -> bool:
    return tuple(path) in self._meta

  def shape(self, path: Path) -> tuple[int, ...]:
    return tuple(self._meta[self._check(path)].shape)

  def dtype(self, path: Path) -> np.dtype:
    return np.dtype(self._meta[self._check(path)].dtype)

  def _array(self, path: Path) -> ts.TensorStore:
    path = self._check(path)
    if path not in self._arrays:
      name = param_name(self._prefix + path)
      if self._ocdbt:
        kv = dict(_kvstore(self._item, write=False), path=name)
      else:
        kv = _kvstore(paths.join(self._item, name), write=False)["base"]
      spec = {"driver": self._zarr, "kvstore": kv, "recheck_cached_data": False,
              "recheck_cached_metadata": False}
      self._arrays[path] = ts.open(spec, open=True, context=self._ctx).result()
    return self._arrays[path]

  def read_async(self, path: Path, index: tuple[slice, ...] | None = None) -> ts.Future:
    """Starts reading ``leaf[index]`` (whole leaf for None); ``.result()`` is numpy."""
    arr = self._array(path)
    return (arr[index] if index is not None else arr).read()

  def read(self, path: Path, index: tuple[slice, ...] | None = None) -> np.ndarray:
    """``leaf[index]`` as numpy in the stored dtype (whole leaf for None)."""
    return np.asarray(self.read_async(path, index).result())

  def get(self, path: Path) -> np.ndarray:
    """Reads one whole leaf as a numpy array in its stored dtype."""
    return self.read(path)

  def iter_reads(self, requests, ahead: int = 2, ahead_bytes: int = 256 * 2 ** 20):
    """``(request, array)`` for ``(path, index)`` requests, keeping up to ``ahead`` reads
    (at most ``ahead_bytes``, at least one) in flight: the next pieces load while the
    caller converts this one."""
    queue: collections.deque = collections.deque()
    nbytes = lambda req: math.prod(s.stop - s.start for s in req[1]) * self.dtype(req[0]).itemsize
    for req in requests:
      while queue and (len(queue) >= ahead or
                       sum(n for _, _, n in queue) + nbytes(req) > ahead_bytes):
        r, fut, _ = queue.popleft()
        yield r, np.asarray(fut.result())
      queue.append((req, self.read_async(*req), nbytes(req)))
    while queue:
      r, fut, _ = queue.popleft()
      yield r, np.asarray(fut.result())

  def _check(self, path: Path) -> Path:
    path = tuple(path)
    if path not in self._meta:
      raise KeyError(f"Parameter {'/'.join(path)} not in checkpoint {self.path}.")
    return path
