"""A ``jax.profiler`` trace of a window of train steps, written into the work directory.

``config.profile.start_step`` (0 = off) and ``config.profile.num_steps``: the trace
starts before step ``start_step`` runs and stops after ``num_steps`` steps (the state
is waited for, so the window holds the device work). Files go to
``{workdir}/profile/plugins/profile/<run>/`` (``*.xplane.pb``), which TensorBoard's
profile plugin and XProf read. For a URL work directory the trace is written to a
local temporary directory and copied into the bucket when it stops. Only process 0
traces.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from absl import logging
import jax

from neo_jax.core import paths


class Profiler:
  """``before_step(step)`` / ``after_step(step, state)`` around every step; ``close()``."""

  def __init__(self, profile_cfg: Any, workdir: str):
    cfg = profile_cfg or {}
    self.start = int(cfg.get("start_step", 0) or 0)
    self.stop = self.start + int(cfg.get("num_steps", 3) or 0)
    self.target = paths.join(workdir, "profile")
    self.enabled = self.start > 0 and jax.process_index() == 0
    self.active = False
    self.local = None

  def before_step(self, step: int) -> None:
    """``step``: the number of steps done before the one about to run."""
    if self.enabled and not self.active and step + 1 == self.start:
      self.local = tempfile.mkdtemp(prefix="neo_jax_profile_") if paths.is_url(self.target) \
          else self.target
      jax.profiler.start_trace(self.local)
      self.active = True
      print(f"Profiling steps {self.start}..{self.stop - 1} into {self.target}", flush=True)

  def after_step(self, step: int, state: Any) -> None:
    if self.active and step + 1 >= self.stop:
      jax.block_until_ready(state)
      self.close()

  def close(self) -> None:
    if not self.active:
      return
    jax.profiler.stop_trace()
    self.active = False
    if self.local != self.target:
      for root, _, files in os.walk(self.local):
        for name in files:
          rel = os.path.relpath(os.path.join(root, name), self.local)
          dst = paths.resolve(paths.join(self.target, rel))
          dst.write_bytes(open(os.path.join(root, name), "rb").read())
      shutil.rmtree(self.local, ignore_errors=True)
    logging.info("Profile written to %s", self.target)
