"""A data-mixture file: the user's sources, given on the command line.

``--config.data.mixture=mix.yaml`` (or ``--config neo_ov_2b:stage2,data=mix.yaml``)
replaces ``data.sources`` with the file's. YAML or JSON, a local path or a URL::

    sources:
      llava_si:                         # a name (logs, skip counts)
        annotation_path: gs://bkt/si.jsonl   # the release's registry fields ...
        data_path: gs://bkt/images           # ... (root of relative media paths)
        sampling_rate: 0.5              # keep this fraction of the records (release: %50)
        weight: 4                       # mixture weight (default: from modality, else 1)
        modality: image                 # text | image | multi_image | video (optional)
        kind: json                      # json (default) | parquet | array_record | tfds | embedded
        options: {max_pixels: 1048576}  # ProcessOptions overrides for this source

``path`` / ``data_root`` are accepted for ``annotation_path`` / ``data_path``. The
release draws a random ``int(n * sampling_rate)`` records of a file once; here the
subset is drawn with the training seed (``pipeline.host_records``).

A source without a ``weight`` but with a ``modality`` gets
``data.modality_weights[modality] / (sources of that modality without a weight)``: the
NEO-ov recipes set text : image : multi-image : video = 2 : 4 : 1 : 1 (docs/design.md §4.1), split
evenly over those sources.
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections

from neo_jax.core import paths

KINDS = ("json", "parquet", "array_record", "tfds", "embedded")
_FIELDS = {"annotation_path": "path", "data_path": "data_root"}
MODALITIES = ("text", "image", "multi_image", "video")
_KNOWN = {"path", "data_root", "sampling_rate", "weight", "modality", "kind", "options", "task",
          "tfds_name", "tfds_split", "tfds_data_dir", "image_key", "question_key",
          "answer_key", "prompt"}


def read_mixture(path: str) -> dict[str, dict[str, Any]]:
  """``{source name: source config}`` from a mixture file.

  Raises:
    FileNotFoundError: no such file; ValueError: a malformed file or source, naming
      the file, the source and what to fix.
  """
  if not paths.exists(path):
    raise FileNotFoundError(f"Data mixture file {path} does not exist.")
  text = paths.read_text(path)
  if path.endswith(".json"):
    doc = json.loads(text)
  else:
    import yaml  # pylint: disable=import-outside-toplevel
    doc = yaml.safe_load(text)
  if not isinstance(doc, dict) or not isinstance(doc.get("sources"), dict) or not doc["sources"]:
    raise ValueError(f"{path}: a mixture file needs a non-empty 'sources:' mapping of "
                     "name -> {annotation_path, data_path, sampling_rate, weight, ...}.")
  out = {}
  for name, src in doc["sources"].items():
    if not isinstance(src, dict):
      raise ValueError(f"{path}: source {name!r} must be a mapping, got {type(src).__name__}.")
    cfg = {_FIELDS.get(k, k): v for k, v in src.items()}
    unknown = set(cfg) - _KNOWN
    if unknown:
      raise ValueError(f"{path}: source {name!r} has unknown fields {sorted(unknown)}; known: "
                       f"{sorted(_KNOWN | set(_FIELDS))}.")
    cfg.setdefault("kind", "json")
    if cfg["kind"] not in KINDS:
      raise ValueError(f"{path}: source {name!r} kind {cfg['kind']!r} is not one of {KINDS}.")
    if cfg["kind"] in ("json", "parquet", "array_record") and not cfg.get("path"):
      raise ValueError(f"{path}: source {name!r} needs an annotation_path.")
    rate = float(cfg.setdefault("sampling_rate", 1.0))
    if not 0 < rate <= 1:
      raise ValueError(f"{path}: source {name!r} sampling_rate={rate} must be in (0, 1].")
    if cfg.get("weight") is not None and float(cfg["weight"]) < 0:
      raise ValueError(f"{path}: source {name!r} has a negative weight.")
    if cfg.get("modality") is not None and cfg["modality"] not in MODALITIES:
      raise ValueError(f"{path}: source {name!r} modality {cfg['modality']!r} is not one of "
                       f"{MODALITIES}.")
    cfg.setdefault("data_root", "")
    cfg.setdefault("options", {})
    out[str(name)] = cfg
  return out


def apply_mixture(data_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of ``data_cfg`` whose sources are those of ``data_cfg.mixture`` (if set).

  Raises:
    ValueError: ``data.require_mixture`` is set and no mixture is given (the
      released-size recipes: they must not silently train on the embedded demo data),
      or a malformed mixture file.
  """
  out = data_cfg.copy_and_resolve_references()
  path = out.get("mixture", "")
  if not path:
    if out.get("require_mixture", False):
      raise ValueError(
          "This recipe trains on your data and no data mixture was given. Pass one: "
          "--config neo_ov_2b:stage2,data=mix.yaml or --config.data.mixture="
          "mix.yaml (a YAML/JSON file of sources with annotation_path, data_path, "
          "sampling_rate, weight; README.md 'Your own data' shows one). To train these "
          "sizes on the embedded demo data on purpose: --config.data.require_mixture=false.")
    return out
  srcs = read_mixture(path)
  ratios = dict(out.get("modality_weights", None) or {})
  counts = {}
  for cfg in srcs.values():   # the modality weight is shared by its sources without a weight
    if cfg.get("weight") is None:
      counts[cfg.get("modality")] = counts.get(cfg.get("modality"), 0) + 1
  for cfg in srcs.values():
    if cfg.get("weight") is None:
      m = cfg.get("modality")
      cfg["weight"] = float(ratios[m]) / counts[m] if m in ratios else 1.0
    cfg["weight"] = float(cfg["weight"])
    if cfg.get("modality") is None:  # kept when given: the run records it (trained_processing)
      cfg.pop("modality", None)
  with out.unlocked():
    out.sources = ml_collections.ConfigDict(srcs)
  return out
