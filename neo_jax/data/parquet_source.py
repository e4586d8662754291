"""Hugging Face style Parquet shards as a random-access source of release-format records.

One row = one record. Columns: ``conversations`` (a JSON string, or a list of
``{from, value}`` / ``{role, content}`` structs), ``image`` / ``images`` (encoded image
bytes, a path, a ``{"bytes": ..., "path": ...}`` struct as ``datasets`` writes images,
or a list of those), and any others (``video``, ``id``, ...) passed through. The file is
read one row group at a time (the last one is cached), through ``core.paths`` so a
``gs://`` shard works. Reads are serialized per source (grain's prefetch threads share
one: pyarrow's reads through a shared file handle are not thread-safe, interleaved
seeks crashed it). A row that cannot be read or decoded becomes a record carrying
``_error`` (a counted skip downstream, ``processor``), never an exception.
"""

from __future__ import annotations

import bisect
import json
import threading
from typing import Any

import numpy as np

from neo_jax.core import paths


class ParquetSource:
  """Random access over the rows of one Parquet file (picklable: reopened per process).

  Raises:
    FileNotFoundError: no such file; ValueError: not a Parquet file (names it).
  """

  def __init__(self, path: str):
    self.path = path
    if not paths.exists(path):
      raise FileNotFoundError(f"Parquet file {path} does not exist.")
    pf = self._open()
    self._starts = np.cumsum([0] + [pf.metadata.row_group(i).num_rows
                                    for i in range(pf.num_row_groups)]).tolist()
    self._file = pf     # reused for the reads in this process; reopened after pickling
    self._cache = (None, None)
    self._lock = threading.Lock()

  def _open(self):
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    try:
      return pq.ParquetFile(paths.resolve(self.path).open("rb"))
    except Exception as e:  # pyarrow.ArrowInvalid and friends
      raise ValueError(f"{self.path} is not a readable Parquet file: {e}") from e

  def __getstate__(self):
    return {"path": self.path, "_starts": self._starts}

  def __setstate__(self, state):
    self.__dict__.update(state, _file=None, _cache=(None, None), _lock=threading.Lock())

  def __len__(self) -> int:
    return self._starts[-1]

  @property
  def row_group_starts(self) -> list[int]:
    """First row of each row group, then the row count (``num_row_groups + 1`` ints)."""
    return list(self._starts)

  def _row_group(self, g: int) -> list[dict]:
    with self._lock:
      if self._cache[0] != g:
        self._file = self._file or self._open()
        self._cache = (g, self._file.read_row_group(g).to_pylist())
      return self._cache[1]

  def __getitem__(self, i: int) -> dict:
    g = bisect.bisect_right(self._starts, i) - 1
    try:
      row = self._row_group(g)[i - self._starts[g]]
    except Exception as e:  # a corrupt row group: every row of it is skipped
      return {"_error": ("bad_record", f"{self.path} row {i}: unreadable row group {g}: {e}")}
    return row_to_record(row, f"{self.path} row {i}")


def _image(x: Any) -> Any:
  if isinstance(x, dict):                       # datasets' Image feature
    return x.get("bytes") or x.get("path")
  return x


def row_to_record(row: dict, where: str) -> dict:
  """A Parquet row -> a release-format record (``_error`` on a bad conversations cell)."""
  rec = {k: v for k, v in row.items() if v is not None}
  conv = rec.get("conversations")
  if isinstance(conv, (bytes, str)):
    try:
      rec["conversations"] = json.loads(conv)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      return {"_error": ("bad_json", f"{where}: conversations is not JSON: {e}")}
  for key in ("image", "images"):
    if key in rec:
      rec[key] = [_image(x) for x in rec[key]] if isinstance(rec[key], list) else _image(rec[key])
  return rec
