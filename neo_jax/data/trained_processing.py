"""The processing a model was trained with, carried with its weights (issue 22).

A model answers best on inputs processed as in training: the same pixel budgets,
frame counts and rates. The trainer writes ``processing.json`` into the work
directory; ``neo_jax.convert export`` copies it into the Hugging Face directory;
``neo_jax.infer`` and ``neo_jax.evaluate`` read it from either and default to it::

  {"format": 1, "tokenizer": "embedded",
   "sources": {"digit": {"modality": "image", "weight": 5.0,
                         "options": {"min_pixels": 1024, "max_pixels": 1024, ...}}, ...}}

``options`` are ``processor.ProcessOptions`` fields (pixels, frames, frames/s),
without the run-level ones (``RUN_FIELDS``). A released NEO directory without the
file gives one source, ``release``, from its ``vision_config`` pixel bounds.

With several sources, ``choose`` picks the one for an input: ``--source NAME`` if
given, else the highest-weight source of the input's modality (a video -> video
sources; several images -> multi-image, then image; one image -> image, then
multi-image; text -> text, then any), ties broken by name.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from neo_jax.core import paths
from neo_jax.data import processor as processor_lib

FILE_NAME = "processing.json"
FORMAT = 1
# Modality of each embedded task (data/embedded.py).
EMBEDDED_MODALITY = {"text": "text", "digit": "image", "aspect": "image", "spatial": "image",
                     "multi_image": "multi_image", "video": "video"}
_PREFERENCE = {"video": ("video",), "multi_image": ("multi_image", "image"),
               "image": ("image", "multi_image"), "text": ("text",)}


def option_fields() -> list[str]:
  """The per-source ``ProcessOptions`` fields a processing file records."""
  return [f.name for f in dataclasses.fields(processor_lib.ProcessOptions)
          if f.name not in processor_lib.RUN_FIELDS]


def describe(data_cfg, options_of) -> dict[str, Any]:
  """The processing document of a data config.

  Args:
    data_cfg: the run's data config with its mixture applied (``sources``).
    options_of: ``(data_cfg, source config) -> ProcessOptions`` (``pipeline.source_options``).
  Returns:
    the document (module docstring): every source with a positive weight.
  """
  out = {"format": FORMAT, "tokenizer": str(data_cfg.get("tokenizer", "embedded")),
         "sources": {}}
  for name in sorted(data_cfg.sources):
    s = data_cfg.sources[name]
    if float(s.get("weight", 0) or 0) <= 0:
      continue
    o = options_of(data_cfg, s)
    modality = s.get("modality", None) or (EMBEDDED_MODALITY.get(s.get("task", ""), "image")
                                           if s.get("kind", "") == "embedded" else "image")
    out["sources"][name] = {"modality": modality, "weight": float(s.weight),
                            "options": {k: getattr(o, k) for k in option_fields()}}
  return out


def write(directory: str, doc: dict[str, Any]) -> str:
  """Writes ``doc`` as ``<directory>/processing.json`` (a folder or URL); returns the path."""
  path = paths.join(directory, FILE_NAME)
  paths.write_text(path, json.dumps(doc, indent=2, sort_keys=True))
  return path


def read(directory: str) -> dict[str, Any] | None:
  """The processing document of a work / Orbax / Hugging Face directory, or None.

  Looks for ``processing.json``; else, in a released NEO directory (``config.json``
  with ``vision_config``), builds a ``release`` source from its ``min_pixels`` /
  ``max_pixels``.

  Raises:
    ValueError: a ``processing.json`` that is not a processing document.
  """
  path = paths.join(directory, FILE_NAME)
  if paths.exists(path):
    doc = json.loads(paths.read_text(path))
    if not isinstance(doc, dict) or not isinstance(doc.get("sources"), dict):
      raise ValueError(f"{path} is not a processing document (no 'sources' mapping).")
    return doc
  cfg_path = paths.join(directory, "config.json")
  if paths.exists(cfg_path):
    cfg = json.loads(paths.read_text(cfg_path))
    vc = cfg.get("vision_config") if isinstance(cfg, dict) else None
    if isinstance(vc, dict) and "max_pixels" in vc:
      opts = {"min_pixels": int(vc.get("min_pixels", 65536)), "max_pixels": int(vc["max_pixels"])}
      return {"format": FORMAT, "sources": {"release": {"modality": "image", "weight": 1.0,
                                                        "options": opts}}}
  return None


def choose(doc: dict[str, Any] | None, *, source: str | None = None, num_images: int = 0,
           video: bool = False) -> tuple[str, dict[str, Any]]:
  """``(source name, ProcessOptions overrides)`` for an input (module docstring).

  Args:
    doc: a processing document, or None (then ``("", {})``: the library defaults).
    source: a source name to use (``--source``).
    num_images / video: the input's media.
  Raises:
    ValueError: ``source`` is not in the document (the message lists the sources).
  """
  if not doc or not doc.get("sources"):
    if source:
      raise ValueError(f"--source {source}: this checkpoint records no training processing.")
    return "", {}
  srcs = doc["sources"]
  if source:
    if source not in srcs:
      raise ValueError(f"--source {source!r} is not a training source of this checkpoint; "
                       f"its sources: {', '.join(sorted(srcs))}.")
    return source, dict(srcs[source].get("options", {}))
  modality = "video" if video else ("multi_image" if num_images > 1 else
                                    "image" if num_images == 1 else "text")
  for m in _PREFERENCE[modality] + tuple(sorted({s.get("modality", "image") for s in srcs.values()})):
    names = [n for n, s in srcs.items() if s.get("modality", "image") == m]
    if names:
      best = min(names, key=lambda n: (-float(srcs[n].get("weight", 0)), n))
      return best, dict(srcs[best].get("options", {}))
  return "", {}


def describe_choice(doc: dict[str, Any] | None, name: str) -> str:
  """One log line naming the processing in use and how to pick another."""
  if not doc or not name:
    return "processing: the library defaults (the checkpoint records no training processing)"
  s = doc["sources"][name]
  opts = ", ".join(f"{k}={v}" for k, v in sorted(s.get("options", {}).items()))
  others = sorted(set(doc["sources"]) - {name})
  tail = f"; --source NAME picks another ({', '.join(others)})" if others else ""
  return f"processing: training source {name!r} ({s.get('modality')}): {opts}{tail}"
