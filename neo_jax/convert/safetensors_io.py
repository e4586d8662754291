"""Lazy reading and shard-by-shard writing of Hugging Face safetensors directories.

Reading opens each tensor on demand with ``safetensors.safe_open`` (memory
mapped, numpy framework, bfloat16 as ``ml_dtypes.bfloat16``), so a converter
holds one tensor (or one stacked leaf) at a time. Writing buffers at most one
shard (``max_shard_bytes``) before it goes to disk; a directory with more than
one shard gets ``model.safetensors.index.json`` (the Hugging Face layout
``model-00001-of-0000N.safetensors``), a single shard is ``model.safetensors``.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class SafetensorsReader:
  """All tensors of a (sharded) safetensors directory, read one at a time.

  Args:
    directory: folder with ``model.safetensors.index.json`` or ``*.safetensors``.

  Raises:
    FileNotFoundError: no safetensors files, or a shard named by the index is
      missing.
  """

  def __init__(self, directory: str):
    self.directory = directory
    index = os.path.join(directory, INDEX_FILE)
    self._file_of: dict[str, str] = {}
    if os.path.isfile(index):
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
      for key, fname in weight_map.items():
        path = os.path.join(directory, fname)
        if not os.path.isfile(path):
          raise FileNotFoundError(f"{index} names shard {fname} for {key!r}, but {path} is missing.")
        self._file_of[key] = path
    else:
      files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
      if not files:
        raise FileNotFoundError(f"No *.safetensors files (and no {INDEX_FILE}) in {directory}.")
      for path in files:
        with safe_open(path, framework="numpy") as f:
          for key in f.keys():
            self._file_of[key] = path

  def keys(self) -> list[str]:
    return list(self._file_of)

  def __contains__(self, key: str) -> bool:
    return key in self._file_of

  def shape(self, key: str) -> tuple[int, ...]:
    """Shape of ``key`` without reading its data."""
    with safe_open(self._path(key), framework="numpy") as f:
      return tuple(f.get_slice(key).get_shape())

  def get(self, key: str) -> np.ndarray:
    """Reads tensor ``key`` (numpy, its stored dtype).

    Raises:
      KeyError: ``key`` is not in the checkpoint (the message names it).
    """
    with safe_open(self._path(key), framework="numpy") as f:
      return f.get_tensor(key)

  def _path(self, key: str) -> str:
    if key not in self._file_of:
      raise KeyError(f"Tensor {key!r} not found in {self.directory}.")
    return self._file_of[key]


class ShardedWriter:
  """Writes tensors into shards of at most ``max_shard_bytes`` (one tensor may exceed it).

  Use ``add(key, array)`` for every tensor, then ``close()``. Tensors are
  stored as given (convert the dtype before ``add``).

  Args:
    directory: output folder (created).
    max_shard_bytes: shard size limit in bytes.
  """

  def __init__(self, directory: str, max_shard_bytes: int = 2 * 1024 ** 3):
    os.makedirs(directory, exist_ok=True)
    self.directory = directory
    self.max_shard_bytes = max_shard_bytes
    self._buffer: dict[str, np.ndarray] = {}
    self._buffer_bytes = 0
    self._shards: list[tuple[str, list[str]]] = []
    self.total_bytes = 0

  def add(self, key: str, array: np.ndarray) -> None:
    if key in self._buffer or any(key in keys for _, keys in self._shards):
      raise ValueError(f"Tensor {key!r} written twice.")
    if self._buffer and self._buffer_bytes + array.nbytes > self.max_shard_bytes:
      self._flush()
    self._buffer[key] = np.ascontiguousarray(array)
    self._buffer_bytes += array.nbytes
    self.total_bytes += array.nbytes

  def _flush(self) -> None:
    name = f"tmp-shard-{len(self._shards):05d}.safetensors"
    save_file(self._buffer, os.path.join(self.directory, name), metadata={"format": "pt"})
    self._shards.append((name, list(self._buffer)))
    self._buffer, self._buffer_bytes = {}, 0

  def close(self) -> list[str]:
    """Flushes the last shard, names the files and writes the index.

    Returns:
      The shard file names.
    """
    if self._buffer or not self._shards:
      self._flush()
    n = len(self._shards)
    names = [SINGLE_FILE] if n == 1 else [
        f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map = {}
    for (tmp, keys), name in zip(self._shards, names):
      os.replace(os.path.join(self.directory, tmp), os.path.join(self.directory, name))
      weight_map.update({k: name for k in keys})
    index = os.path.join(self.directory, INDEX_FILE)
    if n > 1:
      with open(index, "w") as f:
        json.dump({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}, f,
                  indent=2, sort_keys=True)
    elif os.path.exists(index):
      os.remove(index)
    return names
