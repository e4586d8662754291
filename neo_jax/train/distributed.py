"""Multi-host start-up: one ``jax.distributed.initialize`` for every cluster kind.

One process per host (TPU VM worker, SLURM task, GKE pod, or a local CPU
process in tests). After ``initialize``:

* ``jax.devices()`` lists every device of the job; ``jax.local_devices()``
  the host's own. The mesh (``sharding.make_mesh``) spans all of them.
* Each process reads its own slice of the data (``input_pipeline.make_data_iterator``
  uses ``jax.process_index()`` / ``jax.process_count()``) and
  ``Setup.global_batch`` builds global arrays with
  ``jax.make_array_from_process_local_data``.
* Orbax saves and restores collectively (every process calls ``save``), Grain
  iterator states are saved per process; metrics are written by process 0.

Detection order: explicit coordinator / count / id; otherwise JAX's cluster
auto-detection (TPU VM metadata, SLURM ``SLURM_*`` variables, Open MPI, GKE
JobSet environment). On CPU the collectives use gloo.

Failures (``peers.py``): the trainer turns on JAX's recoverable mode (``recoverable``)
and passes ``heartbeat_timeout_s = train.peer_timeout_s - 5`` (JAX's default is 100 s),
so a dead process is noticed in that time and the others leave with one line instead
of JAX's abort. Recoverable mode drops JAX's shutdown barrier: only a caller that
orders its own end (``peers.PeerWatch``) should turn it on.
"""

from __future__ import annotations

import os

from absl import logging
import jax

# Environment variables that mean "this process is one of several".
_CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                "MEGASCALE_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS")


def in_cluster() -> bool:
  """True when a cluster launcher (SLURM, MPI, TPU pod, JobSet) started this process."""
  return any(os.environ.get(k) for k in _CLUSTER_ENV)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids: list[int] | None = None,
               initialization_timeout: int = 300, heartbeat_timeout_s: int = 100,
               recoverable: bool = False) -> None:
  """Joins the job's processes; a no-op for a single process.

  Args:
    coordinator_address: ``host:port`` of process 0 (None = auto-detect).
    num_processes: processes in the job (None = auto-detect).
    process_id: this process's index in ``[0, num_processes)`` (None = auto).
    local_device_ids: devices of this process (GPU: one process per GPU).
    initialization_timeout: [s] wait for every process to connect.
    heartbeat_timeout_s: [s] without a heartbeat before the coordination service
      declares a process dead (``peers.heartbeat_timeout_s``).
    recoverable: JAX's ``jax_enable_recoverability`` (a dead process is recorded, not
      fatal for the others).

  Raises:
    ValueError: only some of coordinator / count / id given outside a cluster
      JAX can detect.
    RuntimeError: ``jax.distributed`` could not connect (JAX's message).
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit) and not all(v is not None for v in explicit) \
      and not in_cluster():
    raise ValueError("Give all of --coordinator_address, --num_processes and --process_id "
                     f"(got {explicit}), or none inside a SLURM / TPU VM / JobSet cluster.")
  if num_processes == 1:
    return
  if jax.config.jax_platforms and "cpu" in jax.config.jax_platforms.split(","):
    # CPU devices of different processes talk through gloo (TCP).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if recoverable:
    jax.config.update("jax_enable_recoverability", True)
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id, local_device_ids=local_device_ids,
                             initialization_timeout=initialization_timeout,
                             heartbeat_timeout_seconds=int(heartbeat_timeout_s))
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def is_main_process() -> bool:
  """Process 0: the one that writes logs, metrics and config files."""
  return jax.process_index() == 0
