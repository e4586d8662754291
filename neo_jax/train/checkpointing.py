"""Orbax checkpoints of the train state together with the Grain iterator state.

Layout: ``{workdir}/checkpoints/{step}/{state,data}`` (``core/run_layout.py``, the one
statement of it); ``workdir`` may be a URL (``gs://bucket/run``: Orbax writes through
tensorstore, Grain's JSON through epath). Saves are asynchronous (the step loop goes on
while the arrays are written); ``keep`` newest steps are kept. A save is committed
atomically by Orbax, so a run killed mid-save resumes from the previous complete
checkpoint.
"""

from __future__ import annotations

from typing import Any

import grain
import orbax.checkpoint as ocp

from neo_jax.core import paths, run_layout

STATE, DATA = run_layout.STATE_ITEM, run_layout.DATA_ITEM


def make_manager(workdir: str, *, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  """Checkpoint manager rooted at ``{workdir}/checkpoints``."""
  opts = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                      create=True)
  return ocp.CheckpointManager(paths.resolve(run_layout.checkpoints_dir(workdir)),
                               options=opts, item_names=(STATE, DATA))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any | None,
         *, force: bool = False) -> bool:
  """Saves ``state`` (and the data iterator state, if any) at ``step``."""
  items = {STATE: ocp.args.StandardSave(state)}
  if data_iter is not None:
    items[DATA] = grain.checkpoint.CheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iter: Any | None) -> Any:
  """Restores the state at ``step`` into the shardings of ``abstract_state``
  (a pytree of ``jax.ShapeDtypeStruct`` with ``sharding``) and, in place, the
  data iterator."""
  items = {STATE: ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items[DATA] = grain.checkpoint.CheckpointRestore(data_iter)
  return manager.restore(step, args=ocp.args.Composite(**items))[STATE]
