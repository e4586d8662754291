"""Reading and streamed writing of Hugging Face safetensors directories.

Reading opens each tensor (or a block of its rows) on demand with
``safetensors.safe_open`` (memory mapped, numpy framework, bfloat16 as
``ml_dtypes.bfloat16``) and closes the file again, so a converter holds one
piece at a time and no mapped pages stay resident.

Writing streams: the ``safetensors`` library serialises a whole dict of tensors
at once (``save_file`` builds the file's bytes in memory, twice a shard), so
``ShardedWriter`` writes the documented file format itself: an 8-byte
little-endian header length, the JSON header (``dtype``, ``shape``,
``data_offsets`` per tensor, ``__metadata__``; space-padded to 8 bytes, as the
library pads) and the raw little-endian bytes, tensor after tensor, piece after
piece. It is given every tensor's shape and dtype first, so each shard's header
is known before its data. Shards hold at most ``max_shard_bytes`` (one tensor
may exceed it); more than one shard gets ``model.safetensors.index.json`` and
the Hugging Face names ``model-00001-of-0000N.safetensors``, a single shard is
``model.safetensors``. Tests read every written file back with ``safe_open``.
"""

from __future__ import annotations

import glob
import json
import math
import os
import sys
from typing import Sequence

import numpy as np
from safetensors import safe_open

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
           "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
           "bool": "BOOL"}


class SafetensorsReader:
  """All tensors of a (sharded) safetensors directory, read one piece at a time.

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

  def get_rows(self, key: str, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of tensor ``key`` (its leading axis), reading only those."""
    with safe_open(self._path(key), framework="numpy") as f:
      return f.get_slice(key)[start:stop]

  def _path(self, key: str) -> str:
    if key not in self._file_of:
      raise KeyError(f"Tensor {key!r} not found in {self.directory}.")
    return self._file_of[key]


def _header(entries: Sequence[tuple[str, tuple[int, ...], np.dtype]], metadata: dict) -> bytes:
  head: dict = {"__metadata__": metadata}
  offset = 0
  for key, shape, dtype in entries:
    n = math.prod(shape) * np.dtype(dtype).itemsize
    head[key] = {"dtype": _DTYPES[np.dtype(dtype).name], "shape": list(shape),
                 "data_offsets": [offset, offset + n]}
    offset += n
  text = json.dumps(head, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)
  return len(text).to_bytes(8, "little") + text


class ShardedWriter:
  """Writes the tensors ``entries`` (in that order) into safetensors shards.

  Use ``write(key, rows)`` with each tensor's rows (blocks of its leading axis, in
  order; or the whole tensor), tensors in ``entries`` order, then ``close()``.
  Memory: the piece being written.

  Args:
    directory: output folder (created).
    entries: ``(key, shape, dtype)`` of every tensor, in writing order.
    max_shard_bytes: shard size limit in bytes.
    metadata: the header's ``__metadata__`` (``format: pt`` as transformers writes).

  Raises:
    ValueError: a key twice, or an unsupported dtype.
  """

  def __init__(self, directory: str, entries: Sequence[tuple[str, tuple[int, ...], np.dtype]],
               max_shard_bytes: int = 2 * 1024 ** 3, metadata: dict | None = None):
    if sys.byteorder != "little":
      raise RuntimeError("ShardedWriter writes native byte order; safetensors is little-endian.")
    keys = [k for k, _, _ in entries]
    if len(set(keys)) != len(keys):
      raise ValueError(f"Tensor keys written twice: {sorted({k for k in keys if keys.count(k) > 1})}.")
    for k, _, dt in entries:
      if np.dtype(dt).name not in _DTYPES:
        raise ValueError(f"Tensor {k!r}: dtype {np.dtype(dt)} is not a safetensors dtype.")
    os.makedirs(directory, exist_ok=True)
    self.directory, self.metadata = directory, metadata or {"format": "pt"}
    self._shards: list[list[tuple[str, tuple[int, ...], np.dtype]]] = []
    size = 0
    for e in entries:
      n = math.prod(e[1]) * np.dtype(e[2]).itemsize
      if not self._shards or (self._shards[-1] and size + n > max_shard_bytes):
        self._shards.append([])
        size = 0
      self._shards[-1].append((e[0], tuple(e[1]), np.dtype(e[2])))
      size += n
    if not self._shards:
      self._shards.append([])
    n = len(self._shards)
    self.names = [SINGLE_FILE] if n == 1 else [
        f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    self.total_bytes = sum(math.prod(s) * d.itemsize for _, s, d in entries)
    self._order = [(i, e) for i, shard in enumerate(self._shards) for e in shard]
    self._pos, self._rows, self._file, self._shard = 0, 0, None, -1
    self._skip_empty()

  def _tmp(self, i: int) -> str:
    return os.path.join(self.directory, f"tmp-shard-{i:05d}.safetensors")

  def _finish_shard(self) -> None:
    if self._file is not None:
      self._file.flush()
      os.fsync(self._file.fileno())
      self._file.close()
      self._file = None

  def write(self, key: str, rows: np.ndarray) -> None:
    """Appends ``rows`` (a block of the leading axis) of tensor ``key``.

    Raises:
      ValueError: ``key`` is not the tensor being written (or the next one), or the
        rows' shape / dtype do not fit it.
    """
    if self._pos >= len(self._order):
      raise ValueError(f"Tensor {key!r}: every planned tensor is already written.")
    shard, (want, shape, dtype) = self._order[self._pos]
    rows = np.asarray(rows)
    n = rows.shape[0] if shape else 1
    fits = key == want and rows.dtype == dtype and (
        rows.shape == shape if not shape else
        (tuple(rows.shape[1:]) == shape[1:] and self._rows + n <= shape[0]))
    if not fits:
      raise ValueError(f"Expected rows of {want!r} {shape} {dtype} (from row {self._rows}), got "
                       f"{key!r} {rows.shape} {rows.dtype}.")
    if shard != self._shard:
      self._open_shard(shard)
    self._file.write(np.ascontiguousarray(rows).reshape(-1).view(np.uint8))
    self._rows += n
    if self._rows == (shape[0] if shape else 1):
      self._pos, self._rows = self._pos + 1, 0
      self._skip_empty()

  def _open_shard(self, shard: int) -> None:
    self._finish_shard()
    self._shard = shard
    self._file = open(self._tmp(shard), "wb")
    self._file.write(_header(self._shards[shard], self.metadata))

  def _skip_empty(self) -> None:
    """Zero-size tensors have no rows to write: pass them (opening their shard)."""
    while self._pos < len(self._order) and math.prod(self._order[self._pos][1][1]) == 0:
      if self._order[self._pos][0] != self._shard:
        self._open_shard(self._order[self._pos][0])
      self._pos += 1

  def add(self, key: str, array: np.ndarray) -> None:
    """Writes a whole tensor."""
    self.write(key, array)

  def close(self) -> list[str]:
    """Checks every tensor was written, names the files and writes the index.

    Returns:
      The shard file names.

    Raises:
      ValueError: a planned tensor was not (completely) written.
    """
    if self._pos != len(self._order):
      missing = [e[0] for _, e in self._order[self._pos:]]
      raise ValueError(f"{len(missing)} tensor(s) not written, first {missing[0]!r}.")
    for i in range(self._shard + 1, len(self.names)):  # nothing planned: one empty file
      self._open_shard(i)
    self._finish_shard()
    weight_map = {}
    for i, name in enumerate(self.names):
      os.replace(self._tmp(i), os.path.join(self.directory, name))
      weight_map.update({k: name for k, _, _ in self._shards[i]})
    index = os.path.join(self.directory, INDEX_FILE)
    if len(self.names) > 1:
      with open(index, "w") as f:
        json.dump({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}, f,
                  indent=2, sort_keys=True)
    elif os.path.exists(index):
      os.remove(index)
    return list(self.names)
