"""CLI: ``python -m neo_jax.train --config NAME[:arg] --workdir DIR [--config.key=value ...]``.

``--config`` is a packaged config (``smoke``, ``demo``, ``neo_ov_2b:stage2``) or the path
of a config file (``neo_jax/configs/__init__.py``).

Resumes automatically from the newest readable checkpoint in ``--workdir``. Multi-host:
``--distributed`` calls ``jax.distributed.initialize`` (auto-detected on TPU
VMs and SLURM; explicit ``--coordinator_address/--num_processes/--process_id``
otherwise), after a preflight of the work directory (``train/preflight.py``).

Exit statuses (``train/exits.py``): 0 done or preempted after the agreed save; 75 a
restart resumes (a peer died, no save was possible within the grace period, a process
could not read its part of a checkpoint); 2 fix the command (the work directory is not
usable, no checkpoint restores); 1 any other error.
"""

from neo_jax import platform as _platform

_platform.select_default_platform()
_platform.guard_network()

import sys

from absl import app, flags

from neo_jax import configs

_CONFIG = configs.define_flag("config")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
_DIST = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from absl import logging  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax is chatty at INFO; metrics are printed.
  from neo_jax.train import exits, peers, preflight  # pylint: disable=g-import-not-at-top
  try:   # on every process, before any of them waits for the others
    preflight.check_workdir(_WORKDIR.value)
  except preflight.PreflightError as e:
    exits.end(f"Preflight: {e}", e.exit_status)
  if _DIST.value or _COORD.value:
    from neo_jax.train import distributed  # pylint: disable=g-import-not-at-top
    distributed.initialize(_COORD.value, _NPROC.value, _PID.value, recoverable=True,
                           heartbeat_timeout_s=peers.heartbeat_timeout_s(
                               _CONFIG.value.train.get("peer_timeout_s", 30.0)))
  from neo_jax.train import resume, trainer  # pylint: disable=g-import-not-at-top
  try:
    trainer.run(_CONFIG.value, _WORKDIR.value)
  except resume.CheckpointUnreadableError as e:
    print(e, flush=True)
    sys.exit(e.exit_status)


if __name__ == "__main__":
  app.run(main)
