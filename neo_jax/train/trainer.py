"""The training job: ``run(config, workdir)``, what ``python -m neo_jax.train`` calls.

The loop itself; each concern it uses is a module of its own:

* ``setup.Setup``: model, mesh, shardings, optimizer, the jitted step;
* ``input_pipeline``: the process-local data iterator, read ahead in a thread by
  ``host_prefetch`` (the loop never blocks inside the pipeline);
* ``resume``: newest readable checkpoint, imported weights or a fresh init;
* ``checkpointing``: Orbax saves of the train state + data-iterator state;
* ``preemption``: a notice on any host -> every process saves the same step, exits 0
  (or, when no save is possible within the grace period, one line and status 75);
* ``peers``: a dead process -> every other one leaves with one line and status 75;
* ``profiler``: a ``jax.profiler`` trace of a window of steps into the work directory;
* ``health``: non-finite and dropped-supervision checks before any save;
* ``throughput``: step time, tokens/s, MFU, goodput (time in data, checkpoints, eval);
* ``evaluate``: held-out accuracy every ``eval_every`` steps;
* ``metric_writer``: console, ``metrics.jsonl``, TensorBoard.

The same code path runs on one CPU and on a TPU pod: every array is a global
``jax.Array`` laid out by the logical-axis rules of ``config.sharding_rules``.
"""

from __future__ import annotations

from absl import logging
import jax
import ml_collections

from neo_jax.core import context_schedule, paths
from neo_jax.train import checkpointing, distributed, health, peers, resume
from neo_jax.train.health import NonFiniteLossError
from neo_jax.train.host_prefetch import HostPrefetch
from neo_jax.train.input_pipeline import (data_config, data_summary, make_data_iterator,
                                         pipeline_metrics, switch_seq_len, write_processing)
from neo_jax.train.metric_writer import MetricWriter
from neo_jax.train.preemption import Preemption
from neo_jax.train.profiler import Profiler
from neo_jax.train.setup import Setup
from neo_jax.train.throughput import Throughput

__all__ = ["run", "Setup", "make_data_iterator", "NonFiniteLossError"]


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  if distributed.is_main_process():
    paths.write_text(paths.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
    write_processing(config, workdir)


def _main_log(s: str) -> None:
  if distributed.is_main_process():
    print(s, flush=True)


def _log_data_summary(config, batches, count: int) -> None:
  """The per-source data table, once, after ``data.audit_batches`` batches."""
  if count == config.data.get("audit_batches", 0) and distributed.is_main_process():
    table = data_summary(batches.consumed, config)
    if table:
      print(f"Data after {count} batches of this process:\n{table}", flush=True)


def _first_phase(config, manager) -> context_schedule.Phase:
  """The phase of the step the run will most likely resume at (the newest checkpoint, or
  ``checkpoint.restore_step``), so its pipeline is built once at the right length."""
  wanted = int(config.checkpoint.get("restore_step", 0) or 0)
  return context_schedule.phase_at(config, wanted or manager.latest_step() or 0)


def _make_evaluator(config, setup):
  if not config.get("eval_every", 0):
    return None
  from neo_jax.train import evaluate  # pylint: disable=g-import-not-at-top
  return evaluate.Evaluator(config, setup)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains until ``config.train.num_steps``; resumes from the newest readable checkpoint.

  Returns:
    ``{"train": last logged train metrics, "eval": last eval metrics, "step": N}``.

  Raises:
    NonFiniteLossError: a non-finite loss or gradient norm (the last good
      checkpoint is left untouched).
    ValueError: inconsistent config (batch not divisible, etc.).
    resume.CheckpointUnreadableError: no checkpoint restores.
  """
  tc = config.train
  if config.batch_size % tc.grad_accum_steps:
    raise ValueError(f"batch_size={config.batch_size} not divisible by "
                     f"grad_accum_steps={tc.grad_accum_steps}.")
  data_config(config)   # a missing / malformed data mixture fails here, before any compile
  _write_config(config, workdir)
  # From here a preemption notice ends the run within the grace period (preemption.py),
  # and a dead peer ends every other process within peer_timeout_s (peers.py).
  with peers.PeerWatch(workdir, tc.get("peer_timeout_s", 30.0)), \
      Preemption(tc.get("signal_grace_s", 30.0), workdir) as preemption:
    with preemption.stage("building the model and restoring the checkpoint"):
      setup = Setup(config)
      manager = checkpointing.make_manager(workdir, keep=config.checkpoint.keep,
                                           async_save=config.checkpoint.async_save)
      seq_len = _first_phase(config, manager).seq_len
      data_iter = make_data_iterator(config, seq_len)
      state = resume.restore_or_init(setup, manager, workdir, data_iter)
      phase = context_schedule.phase_at(config, int(jax.device_get(state.step)))
      if phase.seq_len != seq_len:   # it fell back to an older checkpoint of another phase
        data_iter = switch_seq_len(data_iter, config, phase.seq_len)
    if len(context_schedule.phases(config)) > 1:
      _main_log(f"Context schedule: {context_schedule.describe(config)}; now phase "
                f"{phase.index} ({phase.seq_len} tokens per row).")
    with preemption.stage("compiling the train step"):
      train_step = setup.compile_train_step(log=_main_log, seq_len=phase.seq_len)
    with preemption.stage("running train steps"):
      return _loop(config, workdir, setup, manager, state, (phase.seq_len, train_step),
                   HostPrefetch(data_iter), preemption)


def _next_phase(config, setup, batches, seq_len: int, preemption):
  """Entering a context phase: the pipeline rebuilt at ``seq_len`` from the state of the
  last batch the loop took (``HostPrefetch.consumed``: the read-ahead at the old length is
  dropped), and the step compiled for the new shape."""
  _main_log(f"Context phase: {seq_len} tokens per row from here.")
  state = batches.consumed.state if batches.consumed else batches.iterator.get_state()
  batches.close()
  if hasattr(batches.iterator, "close"):
    batches.iterator.close()
  data_iter = make_data_iterator(config, seq_len)
  data_iter.set_state(state)
  with preemption.stage(f"compiling the train step for {seq_len}-token rows"):
    step_fn = setup.compile_train_step(log=_main_log, seq_len=seq_len)
  return HostPrefetch(data_iter), (seq_len, step_fn)


def _loop(config, workdir, setup, manager, state, phase_step, batches, preemption) -> dict:
  """The step loop from the restored ``state`` to ``train.num_steps`` or a preemption.

  ``phase_step``: ``(seq_len, compiled step)`` of the context phase the loop starts in."""
  tc = config.train
  seq_len, train_step = phase_step
  read = 0
  meter = Throughput(config, setup.abstract_state.params, setup.trainable)
  writer = MetricWriter(workdir, enabled=config.get("tensorboard", True))
  evaluator = _make_evaluator(config, setup)

  step = start = saved = int(jax.device_get(state.step))
  writer.write_run_info(step, {"peak_flops_per_device": meter.peak,
                               "peak_source": meter.peak_source,
                               "devices": jax.device_count(),
                               "processes": jax.process_count()})
  profiler = Profiler(config.get("profile", None), workdir)
  last, last_eval = {}, {}
  meter.restart()
  try:
    while step < tc.num_steps and not preemption.requested:
      phase = context_schedule.phase_at(config, step)
      if phase.seq_len != seq_len:
        batches, (seq_len, train_step) = _next_phase(config, setup, batches, phase.seq_len,
                                                     preemption)
      profiler.before_step(step)
      with meter.phase("data"), preemption.stage("waiting on the input pipeline"):
        host_batch = batches.next(stop=preemption.stop_waiting)
      if host_batch is None:          # a SIGTERM while waiting: save the step we are at
        break
      read += 1
      _log_data_summary(config, batches, read)
      health.check_sample_lengths(host_batch["segment_ids"],
                                  setup.model.config.max_sample_tokens, step)
      health.check_vocabulary(host_batch, setup.model.config, step)
      batch = setup.global_batch(host_batch)
      state, metrics = train_step(state, batch)
      step += 1
      meter.step(metrics)
      profiler.after_step(step, state)
      preempted = preemption.reached(step)   # the same step on every process
      save_now = (step % config.checkpoint.every_steps == 0 or step == tc.num_steps
                  or preempted)
      log_now = step % config.log_every == 0 or step == tc.num_steps or preempted
      if log_now or save_now:
        # Checked before every save too, so a non-finite state is never saved.
        m = {k: v.item() for k, v in jax.device_get(metrics).items()}
        health.check_visual_fit(m, setup.model.config.max_visual_tokens)
        health.check_finite(m, step, manager.latest_step())
      if log_now:
        health.check_supervised_fit(m, setup.model.config.max_supervised_tokens)
        m.update(meter.measure())
        m.update(pipeline_metrics(batches.consumed))
        writer.write(step, m)
        last = m
      if save_now:
        with meter.phase("checkpoint"), preemption.stage(f"saving step {step}"):
          writer.flush()
          checkpointing.save(manager, step, state, batches.consumed, force=preempted)
          saved = step
      if evaluator and not preempted and (step % config.eval_every == 0
                                          or step == tc.num_steps):
        with meter.phase("eval"), preemption.stage(f"evaluating step {step}"):
          # Stops between batches at a preemption sync point (the same on every process).
          result = evaluator.run(state.params, step=step, workdir=workdir,
                                 stop=preemption.reached)
        if result is not None:        # None: interrupted by a preemption notice
          last_eval = result
          writer.write(step, last_eval, prefix="eval")
    if preemption.requested:
      _save_for_preemption(manager, state, batches, writer, preemption, step, start, saved)
  finally:
    batches.close()
    profiler.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()
  return {"train": last, "eval": last_eval, "step": step}


def _save_for_preemption(manager, state, batches, writer, preemption, step, start, saved):
  """The agreed save (once: not again when ``step`` was just saved) and its line."""
  if step == start:
    print(f"Preemption notice before the first step: nothing new to save (the last "
          f"checkpoint is step {manager.latest_step()}), exiting.", flush=True)
    return
  if saved != step:
    with preemption.stage(f"saving step {step}"):
      writer.flush()
      checkpointing.save(manager, step, state, batches.consumed, force=True)
  logging.warning("Preemption: saved step %d, exiting.", step)
  print(f"Preemption notice: saved checkpoint at step {step} on every process, exiting.",
        flush=True)
