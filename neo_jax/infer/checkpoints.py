"""Weights for inference from any of the three places a user has them.

``load(path)`` recognises:

* a training work directory (``config.json`` + ``checkpoints/<step>/state``): the
  newest step's parameters (or ``.../checkpoints/<step>`` for a given one). The
  Orbax item is read whole (parameters and optimizer state) into host memory,
  then only the parameters are kept: for the released sizes, export parameters
  once with ``neo_jax.convert`` instead;
* an Orbax parameter checkpoint of ``neo_jax.convert`` (``model_config.json``);
* a released NEO / NEO-ov Hugging Face directory (``config.json`` with
  ``model_type`` ``neo_chat``), converted in memory.

It returns the model config, the parameters (numpy) and the tokenizer to use
(the run's ``data.tokenizer``; a directory's own ``tokenizer.json`` when it has
one; else the embedded Qwen3 + NEO tokenizer).
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from neo_jax.model import config as config_lib


def _newest_step(ckpt_dir: str) -> int:
  steps = [int(d) for d in os.listdir(ckpt_dir)
           if d.isdigit() and os.path.isdir(os.path.join(ckpt_dir, d, "state"))]
  if not steps:
    raise FileNotFoundError(f"No checkpoint step with a 'state' item in {ckpt_dir}.")
  return max(steps)


def _from_workdir(workdir: str, step: int | None) -> tuple:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "config.json")) as f:
    run = json.load(f)
  cfg = config_lib.get_model_config("neo_2b", **run["model"])
  ckpt_dir = os.path.join(workdir, "checkpoints")
  step = _newest_step(ckpt_dir) if step is None else step
  mgr = ocp.CheckpointManager(os.path.abspath(ckpt_dir), item_names=("state", "data"))
  state = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  params = jax.tree_util.tree_map(np.asarray, state["params"])
  tokenizer = run.get("data", {}).get("tokenizer", "embedded")
  return cfg, params, tokenizer, f"{workdir} step {step}"


def load(path: str, *, overrides: dict | None = None) -> tuple[ml_collections.ConfigDict, Any,
                                                              str, str]:
  """(model config, parameters, tokenizer kind, description) for ``path``.

  Args:
    path: a training work directory, one of its ``checkpoints/<step>``
      directories, an Orbax parameter checkpoint from ``neo_jax.convert``, or a
      released NEO Hugging Face directory.
    overrides: model config fields to change (e.g. ``{"dtype": "float32"}``).

  Raises:
    FileNotFoundError: ``path`` is none of these (the message lists what it looked for).
  """
  path = os.path.abspath(os.path.expanduser(path))
  overrides = overrides or {}
  if os.path.basename(os.path.dirname(path)) == "checkpoints" and os.path.basename(path).isdigit():
    cfg, params, tok, desc = _from_workdir(os.path.dirname(os.path.dirname(path)),
                                           int(os.path.basename(path)))
  elif os.path.isdir(os.path.join(path, "checkpoints")):
    cfg, params, tok, desc = _from_workdir(path, None)
  elif os.path.exists(os.path.join(path, "model_config.json")):
    from neo_jax.convert import orbax_io  # pylint: disable=g-import-not-at-top
    cfg, params = orbax_io.load_config(path), orbax_io.load_params(path)
    tok = path if os.path.exists(os.path.join(path, "tokenizer.json")) else "embedded"
    desc = f"{path} (Orbax parameters)"
  elif os.path.exists(os.path.join(path, "config.json")):
    from neo_jax.convert import convert as cv  # pylint: disable=g-import-not-at-top
    cfg = cv.release_config(path)
    params = cv.collect(cv.release_leaves(path, cfg))
    tok = path if os.path.exists(os.path.join(path, "tokenizer.json")) else "embedded"
    desc = f"{path} (Hugging Face NEO directory)"
  else:
    raise FileNotFoundError(
        f"{path} is not a training work directory (config.json + checkpoints/), an Orbax "
        "parameter checkpoint (model_config.json) or a NEO Hugging Face directory "
        "(config.json).")
  for k, v in overrides.items():
    cfg[k] = v
  config_lib.validate(cfg)
  return cfg, params, tok, desc
