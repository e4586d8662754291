"""Where a run starts: its newest checkpoint, imported weights, or a fresh init.

Policy (``restore_or_init``), in order:
1. The newest checkpoint of ``{workdir}/checkpoints``: train state resharded by
   Orbax to this run's mesh and, when the process count is the one that wrote
   it, every process's data-iterator state (else the iterators start afresh:
   Grain states are per process and do not map onto another count).
2. ``config.checkpoint.init_from``: parameters from ``neo_jax.convert``, fresh
   optimizer state.
3. A fresh initialisation from ``config.train.seed``.
"""

from __future__ import annotations

import re
from typing import Any

from absl import logging
import jax

from neo_jax.core import paths
from neo_jax.train import checkpointing


def saved_process_count(workdir: str, step: int) -> int | None:
  """Process count of the Grain states saved at ``step`` (files
  ``data/process_<i>-of-<n>.json``), or None when there are none."""
  d = paths.resolve(paths.join(workdir, "checkpoints", str(step), "data"))
  names = [p.name for p in d.iterdir()] if d.exists() else []
  counts = {int(m.group(1)) for f in names
            if (m := re.fullmatch(r"process_\d+-of-(\d+)\.json", f))}
  return counts.pop() if len(counts) == 1 else None


def restore_or_init(setup: Any, manager, workdir: str, data_iter: Any) -> Any:
  """The run's initial ``TrainState`` (see the module docstring); restores
  ``data_iter`` in place when its state is restored."""
  config = setup.config
  latest = manager.latest_step()
  if latest is not None:
    saved_pc = saved_process_count(workdir, latest)
    if saved_pc not in (None, jax.process_count()):
      logging.warning("Checkpoint %d was written by %d processes, this run has %d: restoring "
                      "the train state only; the data iterators start afresh.",
                      latest, saved_pc, jax.process_count())
      print(f"Data iterator state not restored ({saved_pc} -> {jax.process_count()} processes)",
            flush=True)
      state = checkpointing.restore(manager, latest, setup.abstract_state, None)
    else:
      state = checkpointing.restore(manager, latest, setup.abstract_state, data_iter)
    logging.info("Resumed from step %d in %s", latest, workdir)
    print(f"Resumed from checkpoint step {latest}", flush=True)
    return state
  if config.checkpoint.get("init_from"):
    from neo_jax.convert import orbax_io  # pylint: disable=g-import-not-at-top
    return setup.state_from_params(orbax_io.load_params(config.checkpoint.init_from))
  return setup.init_state(config.train.seed)
