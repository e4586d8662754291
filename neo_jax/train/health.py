"""Checks on a step's metrics that stop a run before it saves a bad state.

``check_finite`` runs before every save and log: a NaN / inf loss, gradient norm
or parameter stops the run without saving, so the newest checkpoint stays the
last good one. ``check_supervised_fit`` stops a run whose supervised tokens were
silently cut by ``model.max_supervised_tokens``.
"""

from __future__ import annotations

import numpy as np


class NonFiniteLossError(RuntimeError):
  """Raised when a step's loss, gradient norm or parameters are NaN / inf."""


def check_finite(metrics: dict, step: int, last_good_step: int | None) -> None:
  """Raises ``NonFiniteLossError`` (naming the step and the last good checkpoint)
  unless ``loss``, ``grad_norm`` and ``params_finite`` are all finite / true."""
  if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])
          and metrics["params_finite"]):
    raise NonFiniteLossError(
        f"Non-finite loss={metrics['loss']} grad_norm={metrics['grad_norm']} "
        f"params_finite={metrics['params_finite']} at step {step}; "
        f"stopping without saving. The last good checkpoint is step {last_good_step}. "
        "Lower the learning rate or check the data (skip counts in metrics.jsonl).")


def check_supervised_fit(metrics: dict, max_supervised_tokens: int) -> None:
  """Raises ValueError when supervised tokens were dropped by the static gather."""
  if metrics.get("dropped_supervised"):
    raise ValueError(f"{metrics['dropped_supervised']} supervised tokens did not fit in "
                     f"model.max_supervised_tokens={max_supervised_tokens}; "
                     "raise it or let the packer enforce it.")
