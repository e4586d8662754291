"""A training work directory as a source of weights (``core/run_layout.py``).

``neo_jax.infer`` / ``neo_jax.evaluate`` read a run's parameters from here, and
``neo_jax.convert export --src <workdir>`` exports them: only the ``params`` part of the
train state is read (piece by piece, ``orbax_arrays.ParamReader``), never the optimizer
state. Local folders and ``gs://`` URLs alike.
"""

from __future__ import annotations

import json

import ml_collections

from neo_jax.convert.leaves import unflatten
from neo_jax.convert.orbax_arrays import ParamReader
from neo_jax.core import paths, run_layout
from neo_jax.model import config as config_lib


def run_config(workdir: str) -> dict:
  """The run's ``config.json`` as a dict.

  Raises:
    FileNotFoundError: no ``config.json`` in ``workdir``.
  """
  path = run_layout.config_path(workdir)
  if not paths.exists(path):
    raise FileNotFoundError(f"{workdir} has no {run_layout.CONFIG}: not a training work "
                            "directory.")
  return json.loads(paths.read_text(path))


def model_config(workdir: str) -> ml_collections.ConfigDict:
  """The model config the run trained (its ``config.json``'s ``model``, on the schema)."""
  return config_lib.get_model_config("neo_2b", **run_config(workdir)["model"])


def params_reader(workdir: str, step: int | None = None) -> tuple[ParamReader, int]:
  """``(reader of the parameters of checkpoint step, step)``; newest step by default.

  Raises:
    FileNotFoundError: no such step / no checkpoint.
  """
  step = run_layout.newest_step(workdir) if step is None else step
  if not paths.exists(run_layout.state_dir(workdir, step)):
    raise FileNotFoundError(f"{run_layout.step_dir(workdir, step)} holds no train state.")
  return ParamReader(run_layout.step_dir(workdir, step), prefix=run_layout.PARAMS), step


def read_params(reader: ParamReader) -> dict:
  """Every parameter of ``reader`` as a nested dict of numpy arrays (stored dtypes)."""
  return unflatten((p, reader.get(p)) for p in reader.paths())
