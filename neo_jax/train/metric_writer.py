"""Where metrics go: the console (absl + stdout), ``metrics.jsonl`` and TensorBoard.

Only the main process (``distributed.is_main_process``) writes; the others'
writer is inactive, so every process may call it.
"""

from __future__ import annotations

import json
import os

from absl import logging

from neo_jax.train import distributed


class MetricWriter:
  """Console + ``{workdir}/metrics.jsonl`` + TensorBoard events in ``{workdir}/tb``.

  ``write(step, metrics, prefix)`` logs one line ``[prefix] step N k=v ...`` and
  appends ``{"step": N, "kind": prefix, ...}`` to the JSONL file; numeric values
  become TensorBoard scalars ``prefix/key``.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.active = distributed.is_main_process()
    self.tb = None
    self.jsonl = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      if enabled:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self.tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, step: int, metrics: dict, prefix: str = "train") -> None:
    if not self.active:
      return
    text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in metrics.items())
    logging.info("[%s] step %d %s", prefix, step, text)
    print(f"[{prefix}] step {step} {text}", flush=True)
    self.jsonl.write(json.dumps({"step": step, "kind": prefix, **metrics}) + "\n")
    self.jsonl.flush()
    if self.tb is not None:
      for k, v in metrics.items():
        if isinstance(v, (int, float)):
          self.tb.add_scalar(f"{prefix}/{k}", v, step)
      self.tb.flush()

  def write_run_info(self, step: int, info: dict) -> None:
    """One ``{"step": step, "kind": "run", ...}`` record at the start of a run (e.g.
    the MFU peak and where it came from), also printed."""
    if not self.active:
      return
    print(f"[run] step {step} " + " ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    self.jsonl.write(json.dumps({"step": step, "kind": "run", **info}) + "\n")
    self.jsonl.flush()

  def close(self):
    if self.jsonl:
      self.jsonl.close()
    if self.tb:
      self.tb.close()
