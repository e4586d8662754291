"""Step time, tokens/s, model FLOPs and MFU over a logging interval.

``Throughput.step(metrics)`` keeps each step's device metrics (no host sync);
``measure()`` fetches them once and sums the interval's tokens and model FLOPs
(``flops.StepFlops``: the batch's real attention pairs, visual tokens and
supervised predictions, frozen matrices without a weight gradient). MFU = model
FLOP/s / (peak FLOP/s per device x devices), the peak from
``flops.peak_flops_per_device`` (a chip table; a measured matmul off the table) or
``config.peak_flops_per_device``.

Goodput: ``phase("data" | "checkpoint" | "eval")`` times what the loop does besides
train steps; the rest of the interval's wall time is step time (dispatch and the
device work the host waits for). Tokens/s, step time and MFU use the step time;
``goodput`` is step time / wall time. Compilation happens before the loop.
"""

from __future__ import annotations

import collections
import contextlib
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
    self.phases = collections.Counter()

  @contextlib.contextmanager
  def phase(self, name: str):
    """Times a non-step phase of the loop (data, checkpoint, eval) [s]."""
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self.phases[name] += time.perf_counter() - t0

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
    """Interval metrics: ``step_time_s`` [s per step], ``tokens_per_s``,
    ``model_flops_per_step``, ``mfu`` (over step time), ``goodput`` (step time /
    wall time) and ``time/<phase>_s`` sums. Restarts the interval."""
    steps = jax.device_get(self.pending)
    wall = time.perf_counter() - self.t0      # includes waiting for the last step
    n = max(len(steps), 1)
    other = sum(self.phases.values())
    step_s = max(wall - other, 1e-9)
    tokens = sum(float(m["tokens"]) for m in steps)
    total = sum(self.flops_of(m) for m in steps)
    out = {"step_time_s": step_s / n, "tokens_per_s": tokens / step_s,
           "model_flops_per_step": total / n,
           "mfu": total / step_s / (self.peak * jax.device_count()),
           "goodput": step_s / wall, "time/step_s": step_s}
    out.update({f"time/{k}_s": self.phases.get(k, 0.0) for k in ("data", "checkpoint", "eval")})
    self.restart()
    return out
