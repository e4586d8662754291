"""Step time, tokens/s, model FLOPs and MFU over a logging interval.

``Throughput.step(metrics)`` keeps each step's device metrics (no host sync);
``measure()`` fetches them once and sums the interval's tokens and model FLOPs
(``flops.StepFlops``: the batch's real attention pairs, visual tokens and
supervised predictions, frozen matrices without a weight gradient). MFU = model
FLOP/s / (peak FLOP/s per device x devices), the peak from
``flops.peak_flops_per_device`` (a chip table; a measured matmul off the table) or
``config.peak_flops_per_device``. ``restart`` begins a new interval (after
evaluation, so its time is not step time; compilation happens before the loop).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections

from neo_jax.train import flops


class Throughput:
  """Interval meter over the train steps of one process (the metrics are global).

  Args:
    config: the run's config.
    params: abstract parameter tree; trainable: its trainable mask (both from
      ``Setup``).
  """

  def __init__(self, config: ml_collections.ConfigDict, params: Any, trainable: Any):
    self.config = config
    given = config.get("peak_flops_per_device", 0.0)
    if given:
      self.peak, self.peak_source = float(given), "config"
    else:
      self.peak, self.peak_source = flops.peak_flops_per_device(config.model.dtype)
    self.step_flops = flops.StepFlops(config.model, params, trainable)
    self.gathered_head = bool(config.model.max_supervised_tokens)
    self.restart()

  def restart(self) -> None:
    self.t0, self.pending = time.perf_counter(), []

  def step(self, metrics: dict) -> None:
    """Records one step's (device) metrics."""
    self.pending.append({k: metrics[k] for k in ("tokens", "visual_tokens",
                                                 "supervised_tokens", "attention_pairs")})

  def flops_of(self, m: dict) -> float:
    """Model FLOPs of one step from its counts (host floats)."""
    return self.step_flops.step(tokens=float(m["tokens"]), visual_tokens=float(m["visual_tokens"]),
                                head_rows=float(m["supervised_tokens"]),
                                attention_pairs=float(m["attention_pairs"]))

  def measure(self) -> dict:
    """``{step_time_s [s], tokens_per_s, model_flops_per_step, mfu}`` of the interval
    (averages over its steps). Restarts the interval."""
    elapsed = time.perf_counter() - self.t0
    steps = jax.device_get(self.pending)
    n = max(len(steps), 1)
    tokens = sum(float(m["tokens"]) for m in steps)
    total = sum(self.flops_of(m) for m in steps)
    self.restart()
    return {"step_time_s": elapsed / n, "tokens_per_s": tokens / elapsed,
            "model_flops_per_step": total / n,
            "mfu": total / elapsed / (self.peak * jax.device_count())}
