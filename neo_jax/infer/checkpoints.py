"""Weights for inference from any of the three places a user has them.

``load(path)`` recognises:

* a training work directory (``config.json`` + ``checkpoints/<step>/state``,
  ``core/run_layout.py``), local or ``gs://``: the newest step's parameters (or
  ``.../checkpoints/<step>`` for a given one), read leaf by leaf without the optimizer
  state;
* an Orbax parameter checkpoint of ``neo_jax.convert`` (``model_config.json``);
* a released NEO / NEO-ov Hugging Face directory (``config.json`` with
  ``model_type`` ``neo_chat``), converted in memory.

It returns the model config, the parameters (numpy) and the tokenizer to use
(the run's ``data.tokenizer``; a directory's own ``tokenizer.json`` when it has
one; else the embedded Qwen3 + NEO tokenizer).
"""

from __future__ import annotations

import os
from typing import Any

from neo_jax.core import paths, run_layout
from neo_jax.model.model_config import ModelConfig


def _from_workdir(workdir: str, step: int | None) -> tuple:
  from neo_jax.convert import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  cfg = workdir_lib.model_config(workdir)
  reader, step = workdir_lib.params_reader(workdir, step)
  params = workdir_lib.read_params(reader)
  tokenizer = workdir_lib.run_config(workdir).get("data", {}).get("tokenizer", "embedded")
  return cfg, params, tokenizer, f"{workdir} step {step}"


def load(path: str, *, overrides: dict | None = None) -> tuple[ModelConfig, Any, str, str]:
  """(model config, parameters, tokenizer kind, description) for ``path``.

  The model config is the typed ``ModelConfig`` (built here, once, from the stored
  ``ConfigDict`` with the ``overrides``).

  Args:
    path: a training work directory, one of its ``checkpoints/<step>``
      directories, an Orbax parameter checkpoint from ``neo_jax.convert``, or a
      released NEO Hugging Face directory.
    overrides: model config fields to change (e.g. ``{"dtype": "float32"}``).

  Raises:
    FileNotFoundError: ``path`` is none of these (the message lists what it looked for).
    ValueError: an override names no field or sets a bad value.
  """
  path = path if paths.is_url(path) else os.path.abspath(os.path.expanduser(path))
  overrides = overrides or {}
  workdir, step = run_layout.split_step(path)
  has = lambda name: paths.exists(paths.join(path, name))
  if step is not None or run_layout.is_workdir(path):
    cfg, params, tok, desc = _from_workdir(workdir, step)
  elif has("model_config.json"):
    from neo_jax.convert import orbax_io  # pylint: disable=g-import-not-at-top
    cfg, params = orbax_io.load_config(path), orbax_io.load_params(path)
    tok = path if has("tokenizer.json") else "embedded"
    desc = f"{path} (Orbax parameters)"
  elif has("config.json"):
    from neo_jax.convert import convert as cv  # pylint: disable=g-import-not-at-top
    with paths.local_input(path) as local:   # safetensors and tokenizers need files
      cfg = cv.release_config(local)
      params = cv.collect(cv.release_leaves(local, cfg))
      tok = local if has("tokenizer.json") else "embedded"
      if tok != "embedded":
        from neo_jax.data.tokenizer import get_tokenizer  # pylint: disable=g-import-not-at-top
        get_tokenizer(tok)   # read while the local copy exists
    desc = f"{path} (Hugging Face NEO directory)"
  else:
    raise FileNotFoundError(
        f"{path} is not a training work directory (config.json + checkpoints/), an Orbax "
        "parameter checkpoint (model_config.json) or a NEO Hugging Face directory "
        "(config.json).")
  return ModelConfig.coerce(cfg).replace(**overrides), params, tok, desc
