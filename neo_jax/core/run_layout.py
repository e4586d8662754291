"""Where a training work directory keeps what (the one statement of its layout).

::

  <workdir>/config.json                     the run's config (process 0)
  <workdir>/processing.json                 each source's processing (data/trained_processing.py)
  <workdir>/metrics.jsonl, tb/, profile/    logs
  <workdir>/checkpoints/<step>/state        Orbax PyTree: {"step", "params", "opt_state"}
  <workdir>/checkpoints/<step>/data         Grain iterator states, process_<i>-of-<n>.json

``workdir`` may be a URL (``gs://bucket/run``). Training (``train/checkpointing.py``,
``train/resume.py``), inference (``infer/checkpoints.py``) and conversion
(``convert export --src <workdir>``) find checkpoints through these functions.
"""

from __future__ import annotations

import os

from neo_jax.core import paths

CHECKPOINTS = "checkpoints"
STATE_ITEM = "state"
DATA_ITEM = "data"
CONFIG = "config.json"
PARAMS = ("params",)   # the parameters' path inside the state item


def checkpoints_dir(workdir: str) -> str:
  """``<workdir>/checkpoints``."""
  return paths.join(workdir, CHECKPOINTS)


def step_dir(workdir: str, step: int) -> str:
  """``<workdir>/checkpoints/<step>``."""
  return paths.join(workdir, CHECKPOINTS, str(step))


def state_dir(workdir: str, step: int) -> str:
  """``<workdir>/checkpoints/<step>/state`` (the Orbax PyTree of the train state)."""
  return paths.join(workdir, CHECKPOINTS, str(step), STATE_ITEM)


def data_dir(workdir: str, step: int) -> str:
  """``<workdir>/checkpoints/<step>/data`` (the data iterators' states)."""
  return paths.join(workdir, CHECKPOINTS, str(step), DATA_ITEM)


def config_path(workdir: str) -> str:
  """``<workdir>/config.json``."""
  return paths.join(workdir, CONFIG)


def steps(workdir: str) -> list[int]:
  """Steps under ``checkpoints/`` that hold a ``state`` item, ascending (renamed ones,
  ``<step>.unreadable``, are not steps)."""
  root = paths.resolve(checkpoints_dir(workdir))
  if not root.exists():
    return []
  return sorted(int(p.name) for p in root.iterdir()
                if p.name.isdigit() and (p / STATE_ITEM).exists())


def is_workdir(path: str) -> bool:
  """Whether ``path`` is a training work directory (``config.json`` + ``checkpoints/``)."""
  return paths.exists(config_path(path)) and paths.exists(checkpoints_dir(path))


def split_step(path: str) -> tuple[str, int | None]:
  """``(workdir, step)`` of ``<workdir>/checkpoints/<step>``, else ``(path, None)``."""
  path = os.fspath(path).rstrip("/")
  parent, name = os.path.split(path)
  if os.path.basename(parent) == CHECKPOINTS and name.isdigit():
    return os.path.dirname(parent), int(name)
  return path, None


def newest_step(workdir: str) -> int:
  """The newest checkpoint step of a work directory.

  Raises:
    FileNotFoundError: it has none (names the folder).
  """
  found = steps(workdir)
  if not found:
    raise FileNotFoundError(f"No checkpoint step with a '{STATE_ITEM}' item in "
                            f"{checkpoints_dir(workdir)}.")
  return found[-1]
