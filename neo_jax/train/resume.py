"""Where a run starts: its newest readable checkpoint, imported weights, or a fresh init.

Policy (``restore_or_init``), in order:
1. The newest committed checkpoint of ``{workdir}/checkpoints`` that restores (or the
   one ``config.checkpoint.restore_step`` names): train state resharded by Orbax to
   this run's mesh and, when the process count is the one that wrote it, every
   process's data-iterator state (else the iterators start afresh: Grain states are
   per process and do not map onto another count).
2. ``config.checkpoint.init_from``: parameters from ``neo_jax.convert``, fresh
   optimizer state.
3. A fresh initialisation from ``config.train.seed``.

A committed checkpoint that does not restore (files truncated, metadata unreadable:
the disk or an interrupted copy, not Orbax, which commits atomically) is skipped with a
warning naming its step and the error, and the next older one is tried; once one
restores, the unreadable ones are renamed ``checkpoints/<step>.unreadable`` (kept for a
look, invisible to Orbax, which would otherwise refuse to save those steps again).
With ``restore_step``, the newer checkpoints are renamed ``<step>.superseded``. An
error that says the store is unreachable is re-raised (a restart retries), and so is
every failure when none restores (``CheckpointUnreadableError``, nothing renamed: a
changed model config looks the same and must not start the run afresh).

Several processes: each restores its own shards; Orbax waits for all of them at a
barrier after reading, so a process that fails cannot fall back on its own. It renames
the unreadable step (so the restart skips it) and ends with status 75
(``CheckpointUnreadableError`` with ``restart=True``); the others are ended by
``peers.PeerWatch`` (the same status). The restart resumes from the older checkpoint.
"""

from __future__ import annotations

import re
from typing import Any

from absl import logging
import jax

from neo_jax.core import paths, run_layout
from neo_jax.train import checkpointing, exits

_TRANSIENT = re.compile(r"UNAVAILABLE|DEADLINE_EXCEEDED|Connection refused|timed out|"
                        r"Temporary failure|\b503\b|\b429\b")


class CheckpointUnreadableError(RuntimeError):
  """No committed checkpoint restores (or, several processes: this one could not read
  its part; ``restart`` says a restart resumes from an older one)."""

  def __init__(self, message: str, restart: bool = False):
    super().__init__(message)
    self.restart = restart
    self.exit_status = exits.RESTARTABLE if restart else exits.CONFIG


def saved_process_count(workdir: str, step: int) -> int | None:
  """Process count of the Grain states saved at ``step`` (files
  ``data/process_<i>-of-<n>.json``), or None when there are none."""
  d = paths.resolve(run_layout.data_dir(workdir, step))
  names = [p.name for p in d.iterdir()] if d.exists() else []
  counts = {int(m.group(1)) for f in names
            if (m := re.fullmatch(r"process_\d+-of-(\d+)\.json", f))}
  return counts.pop() if len(counts) == 1 else None


def set_aside(workdir: str, step: int, why: str) -> str:
  """Renames ``checkpoints/<step>`` to ``checkpoints/<step>.<why>`` (``.<why>.<k>`` when
  taken); returns the new name. Orbax lists only all-digit step names."""
  root = paths.resolve(run_layout.checkpoints_dir(workdir))
  name, k = f"{step}.{why}", 1
  while (root / name).exists():
    name, k = f"{step}.{why}.{k}", k + 1
  (root / str(step)).rename(root / name)
  return name


def _reason(exc: BaseException) -> str:
  text = str(exc).strip().splitlines()
  return f"{type(exc).__name__}: {text[0][:500] if text else ''}"


def _restore(setup: Any, manager, workdir: str, data_iter: Any, step: int) -> Any:
  saved_pc = saved_process_count(workdir, step)
  if saved_pc not in (None, jax.process_count()):
    logging.warning("Checkpoint %d was written by %d processes, this run has %d: restoring "
                    "the train state only; the data iterators start afresh.",
                    step, saved_pc, jax.process_count())
    print(f"Data iterator state not restored ({saved_pc} -> {jax.process_count()} processes)",
          flush=True)
    return checkpointing.restore(manager, step, setup.abstract_state, None)
  return checkpointing.restore(manager, step, setup.abstract_state, data_iter)


def _say(text: str) -> None:
  logging.warning("%s", text)
  print(text, flush=True)


def restore_or_init(setup: Any, manager, workdir: str, data_iter: Any) -> Any:
  """The run's initial ``TrainState`` (see the module docstring); restores
  ``data_iter`` in place when its state is restored.

  Raises:
    ValueError: ``checkpoint.restore_step`` names no committed checkpoint.
    CheckpointUnreadableError: no checkpoint restores (or, several processes, this
      one could not read its part of one).
  """
  config = setup.config
  steps = sorted(manager.all_steps(), reverse=True)
  wanted = int(config.checkpoint.get("restore_step", 0) or 0)
  if wanted and wanted not in steps:
    raise ValueError(f"checkpoint.restore_step={wanted}: no committed checkpoint of that step "
                     f"in {run_layout.checkpoints_dir(workdir)} (committed: {sorted(steps)}).")
  bad = []
  for step in [wanted] if wanted else steps:
    try:
      state = _restore(setup, manager, workdir, data_iter, step)
    except Exception as e:  # pylint: disable=broad-except
      if _TRANSIENT.search(str(e)):
        raise
      bad.append((step, _reason(e)))
      _say(f"Checkpoint step {step} is unreadable ({bad[-1][1]}).")
      if jax.process_count() > 1:
        try:
          name = set_aside(workdir, step, "unreadable")
        except OSError:      # another process renamed it first
          name = f"{step}.unreadable"
        raise CheckpointUnreadableError(
            f"Checkpoint step {step} is unreadable on process {jax.process_index()} "
            f"({bad[-1][1]}); renamed {run_layout.CHECKPOINTS}/{name}. Restart to resume "
            "from the previous committed checkpoint.", restart=True) from e
      continue
    moved = [f"{s} -> {set_aside(workdir, s, 'unreadable')}" for s, _ in bad]
    moved += [f"{s} -> {set_aside(workdir, s, 'superseded')}" for s in steps
              if wanted and s > wanted]
    if moved:
      manager.reload()
      _say(f"Restored step {step}; checkpoints renamed out of Orbax's view: {', '.join(moved)}.")
    logging.info("Resumed from step %d in %s", step, workdir)
    print(f"Resumed from checkpoint step {step}", flush=True)
    return state
  if bad:
    raise CheckpointUnreadableError(
        "No checkpoint restores: " + "; ".join(f"step {s}: {r}" for s, r in bad) +
        ". Nothing was renamed (a changed model config fails the same way). Fix the config, "
        f"or move the bad checkpoints out of {run_layout.CHECKPOINTS}/, or pick one with "
        "--config.checkpoint.restore_step.")
  if config.checkpoint.get("init_from"):
    from neo_jax.convert import orbax_io  # pylint: disable=g-import-not-at-top
    return setup.state_from_params(orbax_io.load_params(config.checkpoint.init_from))
  return setup.init_state(config.train.seed)
