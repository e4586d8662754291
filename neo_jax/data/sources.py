"""Random-access record sources: JSON / JSONL, ArrayRecord, TFDS, embedded (docs/design.md §3.3).

Every source is a ``grain.MapDataset`` of release-format record dicts with
``"_id"`` = ``"{source name}:{index}"`` and ``"data_path"`` (the root of
relative media paths) filled in.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import grain
import numpy as np

from neo_jax.core import paths
from neo_jax.data import embedded


class JsonLinesSource:
  """A JSON array or JSONL annotation file as a random-access source.

  JSONL: one streaming pass records the byte range of every non-empty line
  (``_line_ranges``: 16 bytes a record, never the file's text); a record is read
  (seek + read, a range request for an object) and parsed on access. A JSON array
  must be parsed whole: its records are kept as JSON text. Either way the source
  pickles cheaply into worker processes (the file is reopened there).

  Raises:
    FileNotFoundError: no such file; ValueError: a JSON file that is not a list.
  """

  def __init__(self, path: str):
    if not paths.exists(path):
      raise FileNotFoundError(f"Annotation file {path} does not exist.")
    self.path = path
    self._file = None
    if path.endswith(".jsonl"):
      self._starts, self._ends = _line_ranges(path)
      self._items = None
    else:
      recs = json.loads(paths.read_bytes(path))   # a local file or an object (gs://...)
      if not isinstance(recs, list):
        raise ValueError(f"{path}: a JSON annotation file must hold a list of records.")
      self._items = [json.dumps(r).encode() for r in recs]

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "_file"}

  def __setstate__(self, state):
    self.__dict__.update(state, _file=None)

  def __len__(self) -> int:
    return len(self._items) if self._items is not None else len(self._starts)

  def _line(self, i: int) -> bytes:
    if self._items is not None:
      return self._items[i]
    if self._file is None:
      self._file = paths.resolve(self.path).open("rb")
    self._file.seek(int(self._starts[i]))
    return self._file.read(int(self._ends[i] - self._starts[i]))

  def __getitem__(self, i: int) -> dict:
    try:
      return json.loads(self._line(i))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:   # a counted skip, not a crash
      return {"_error": ("bad_json", f"{self.path} line record {i}: {e}")}


def _line_ranges(path: str, chunk: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
  """``(starts, ends)`` int64 byte ranges of the non-empty lines of a file, in one
  streaming pass of ``chunk`` bytes at a time (``\r\n`` endings allowed)."""
  starts, ends = [], []
  line_start, offset = 0, 0
  with paths.resolve(path).open("rb") as f:
    while True:
      buf = f.read(chunk)
      if not buf:
        break
      nl = np.flatnonzero(np.frombuffer(buf, np.uint8) == 10) + offset
      begin = np.concatenate([[line_start], nl[:-1] + 1]) if len(nl) else np.zeros(0, np.int64)
      starts.append(begin)
      ends.append(nl)
      if len(nl):
        line_start = int(nl[-1]) + 1
      offset += len(buf)
  starts.append(np.asarray([line_start]))
  ends.append(np.asarray([offset]))
  s, e = np.concatenate(starts).astype(np.int64), np.concatenate(ends).astype(np.int64)
  keep = e - s > 0            # empty lines are not records ("\r" endings parse as JSON)
  return s[keep], e[keep]


def _json_bytes(x: bytes) -> dict:
  return json.loads(x)


@dataclasses.dataclass(frozen=True)
class _Annotate:
  """Adds ``_id`` and ``data_path`` to a record (MapDataset.map_with_index)."""
  name: str
  data_root: str

  def __call__(self, index: int, rec: Any) -> dict:
    rec = dict(rec) if isinstance(rec, dict) else {"_raw": rec}
    rec["_id"] = f"{self.name}:{index}" + (f"({rec['id']})" if "id" in rec else "")
    if self.data_root and not rec.get("data_path"):
      rec["data_path"] = self.data_root
    return rec


@dataclasses.dataclass(frozen=True)
class TfdsToRecord:
  """Maps a TFDS example to a release-format record.

  Fields: ``image_key`` (an image feature, uint8 ``[H, W, C]`` with C = 1 or
  3, or a sequence of images ``[N, H, W, C]`` / list, which becomes a
  multi-image record, whose ``prompt`` must then hold one ``<image>`` tag per
  image; empty = text only), ``question_key`` / ``answer_key``
  (text features; bytes decoded as UTF-8), ``prompt``: a format string with
  ``{question}``.
  """
  image_key: str = "image"
  question_key: str = "question"
  answer_key: str = "answer"
  prompt: str = "{question}"

  def __call__(self, ex: dict) -> dict:
    def text(x):
      x = x.item() if hasattr(x, "item") and getattr(x, "shape", None) == () else x
      return x.decode() if isinstance(x, bytes) else str(x)
    rec = {"conversations": [
        {"from": "human", "value": self.prompt.format(question=text(ex[self.question_key]))},
        {"from": "gpt", "value": text(ex[self.answer_key])}]}
    if self.image_key:
      img = ex[self.image_key]
      if isinstance(img, (list, tuple)) or getattr(img, "ndim", 0) == 4:
        rec["images"] = [_tfds_image(x) for x in img]
      else:
        rec["image"] = _tfds_image(img)
    return rec


def _tfds_image(x: Any) -> Any:
  """A decoded TFDS image as Pillow takes it: ``[H, W, 1]`` -> ``[H, W]`` (grayscale)."""
  x = np.asarray(x)
  return x[..., 0] if x.ndim == 3 and x.shape[-1] == 1 else x


def make_source(name: str, cfg: Any, cache_dir: str = "", split: str = "train") -> grain.MapDataset:
  """Builds one source's ``MapDataset`` of annotated records.

  Args:
    name: source name (used in record ids).
    cfg: the source's config: ``kind`` in embedded | json | array_record |
      tfds; ``task`` (embedded), ``path`` (json: file; array_record: file or
      list of files), ``tfds_name`` / ``tfds_split`` / ``tfds_data_dir`` and
      the ``TfdsToRecord`` keys (tfds), ``data_root``.
    cache_dir: embedded cache directory ("" = default).
    split: "train" | "heldout" (embedded only).
  Raises:
    ValueError: unknown kind.
  """
  kind = cfg.kind
  root = cfg.get("data_root", "") or ""
  if kind == "embedded":
    recs = embedded.load_records(cfg.task, split, cache_dir or None)
    ds = grain.MapDataset.source(recs)
  elif kind == "json":
    ds = grain.MapDataset.source(JsonLinesSource(cfg.path))
    root = root or os.fspath(paths.resolve(cfg.path).parent)
  elif kind == "parquet":
    from neo_jax.data.parquet_source import ParquetSource  # pylint: disable=g-import-not-at-top
    ds = grain.MapDataset.source(ParquetSource(cfg.path))
    root = root or os.fspath(paths.resolve(cfg.path).parent)
  elif kind == "array_record":
    files: Sequence[str] = [cfg.path] if isinstance(cfg.path, str) else list(cfg.path)
    ds = grain.MapDataset.source(grain.sources.ArrayRecordDataSource(files)).map(_json_bytes)
  elif kind == "tfds":
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    src = tfds.data_source(cfg.tfds_name, split=cfg.get("tfds_split", "train"),
                           data_dir=cfg.get("tfds_data_dir", None) or None)
    conv = TfdsToRecord(cfg.get("image_key", "image"), cfg.get("question_key", "question"),
                        cfg.get("answer_key", "answer"), cfg.get("prompt", "{question}"))
    ds = grain.MapDataset.source(src).map(conv)
  else:
    raise ValueError(f"source {name!r}: unknown kind {kind!r} "
                     "(embedded | json | parquet | array_record | tfds).")
  return ds.map_with_index(_Annotate(name, root))


def write_array_record(path: str, records: Sequence[dict]) -> None:
  """Writes release-format records as JSON bytes into one ArrayRecord file."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  w = array_record_module.ArrayRecordWriter(path, "group_size:1")
  for r in records:
    w.write(json.dumps(r).encode())
  w.close()


