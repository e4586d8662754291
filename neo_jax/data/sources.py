"""Random-access record sources: JSON / JSONL, ArrayRecord, TFDS, embedded (NEO_SPEC §3.3).

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

  Keeps each record's JSON text (one ``bytes`` per record) and parses on
  access, so the source pickles cheaply into worker processes.

  Raises:
    FileNotFoundError: no such file; ValueError: a JSON file that is not a list.
  """

  def __init__(self, path: str):
    if not paths.exists(path):
      raise FileNotFoundError(f"Annotation file {path} does not exist.")
    data = paths.read_bytes(path)   # a local file or an object (gs://...)
    if path.endswith(".jsonl"):
      self._items = [line for line in data.splitlines() if line.strip()]
    else:
      recs = json.loads(data)
      if not isinstance(recs, list):
        raise ValueError(f"{path}: a JSON annotation file must hold a list of records.")
      self._items = [json.dumps(r).encode() for r in recs]

  def __len__(self) -> int:
    return len(self._items)

  def __getitem__(self, i: int) -> dict:
    try:
      return json.loads(self._items[i])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:   # a counted skip, not a crash
      return {"_error": ("bad_json", f"record {i}: {e}")}


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


