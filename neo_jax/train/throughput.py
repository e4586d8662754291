"""Step time, tokens/s and MFU over a logging interval.

``Throughput.measure`` turns an interval's wall time and the last step's token
counts into ``step_time_s``, ``tokens_per_s`` and ``mfu`` = model FLOP/s /
(peak FLOP/s per device x devices), with model FLOPs per token from
``flops.train_flops_per_token`` (the PaLM / MaxText convention). ``restart``
begins a new interval (after logging, evaluation or compilation, so their time
is not counted as step time).
"""

from __future__ import annotations

import time

import jax
import ml_collections

from neo_jax.train import flops


class Throughput:
  """Interval meter; ``step()`` after each train step, ``measure(m)`` at a log."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.peak = (config.get("peak_flops_per_device", 0.0)
                 or flops.measure_peak_flops(config.model.dtype))
    self.avg_keys = config.get("avg_visible_keys", 0) or config.seq_len / 4
    self.restart()

  def restart(self) -> None:
    self.t0, self.steps = time.perf_counter(), 0

  def step(self) -> None:
    self.steps += 1

  def measure(self, m: dict) -> dict:
    """``{step_time_s [s], tokens_per_s, mfu}`` of the interval; ``m`` holds the
    step's ``tokens`` and ``supervised_tokens`` counts. Restarts the interval."""
    c = self.config
    dt = (time.perf_counter() - self.t0) / max(self.steps, 1)
    head_frac = (m["supervised_tokens"] / max(m["tokens"], 1)
                 if c.model.max_supervised_tokens else 1.0)
    fpt = flops.train_flops_per_token(c.model, avg_visible_keys=self.avg_keys,
                                      head_fraction=head_frac)
    tok_s = m["tokens"] / dt
    self.restart()
    return {"step_time_s": dt, "tokens_per_s": tok_s,
            "mfu": fpt * tok_s / (self.peak * jax.device_count())}
