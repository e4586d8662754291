"""Helpers shared by the trainer tests: the CLI command line and its logged losses."""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout


def train_cmd(workdir: str, steps: int, every: int) -> list[str]:
  """``python -m neo_jax.train`` on the ``smoke`` config checkpointing every ``every`` steps."""
  return [sys.executable, "-m", "neo_jax.train", f"--config=smoke:steps={steps}",
          f"--workdir={workdir}", f"--config.checkpoint.every_steps={every}"]


def logged_losses(workdir: str) -> dict[int, float]:
  """``{step: loss}`` of the train records in ``workdir/metrics.jsonl`` (a local folder
  or a ``gs://`` work directory)."""
  from neo_jax.core import paths  # pylint: disable=import-outside-toplevel
  out = {}
  for line in paths.read_text(paths.join(workdir, "metrics.jsonl")).splitlines():
    r = json.loads(line)
    if r["kind"] == "train":
      out[r["step"]] = r["loss"]
  return out
