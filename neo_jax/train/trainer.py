"""The training job: ``run(config, workdir)``, what ``python -m neo_jax.train`` calls.

The loop itself; each concern it uses is a module of its own:

* ``setup.Setup``: model, mesh, shardings, optimizer, the jitted step;
* ``input_pipeline``: the process-local data iterator;
* ``resume``: newest checkpoint, imported weights or a fresh init;
* ``checkpointing``: Orbax saves of the train state + data-iterator state;
* ``preemption``: a notice on any host -> every process saves the same step, exits 0;
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

from neo_jax.core import paths
from neo_jax.train import checkpointing, distributed, health, resume
from neo_jax.train.health import NonFiniteLossError
from neo_jax.train.input_pipeline import (data_config, data_summary, make_data_iterator,
                                         pipeline_metrics, write_processing)
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


def _log_data_summary(config, data_iter, batches: int) -> None:
  """The per-source data table, once, after ``data.audit_batches`` batches."""
  if batches == config.data.get("audit_batches", 0) and distributed.is_main_process():
    table = data_summary(data_iter, config)
    if table:
      print(f"Data after {batches} batches of this process:\n{table}", flush=True)


def _make_evaluator(config, setup):
  if not config.get("eval_every", 0):
    return None
  from neo_jax.train import evaluate  # pylint: disable=g-import-not-at-top
  return evaluate.Evaluator(config, setup)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains until ``config.train.num_steps``; resumes from the newest checkpoint.

  Returns:
    ``{"train": last logged train metrics, "eval": last eval metrics, "step": N}``.

  Raises:
    NonFiniteLossError: a non-finite loss or gradient norm (the last good
      checkpoint is left untouched).
    ValueError: inconsistent config (batch not divisible, etc.).
  """
  tc = config.train
  if config.batch_size % tc.grad_accum_steps:
    raise ValueError(f"batch_size={config.batch_size} not divisible by "
                     f"grad_accum_steps={tc.grad_accum_steps}.")
  data_config(config)   # a missing / malformed data mixture fails here, before any compile
  _write_config(config, workdir)
  setup = Setup(config)
  data_iter = make_data_iterator(config)
  manager = checkpointing.make_manager(workdir, keep=config.checkpoint.keep,
                                       async_save=config.checkpoint.async_save)
  state = resume.restore_or_init(setup, manager, workdir, data_iter)
  train_step = setup.compile_train_step(
      log=(lambda s: print(s, flush=True)) if distributed.is_main_process() else (lambda s: None))
  meter = Throughput(config, setup.abstract_state.params, setup.trainable)
  writer = MetricWriter(workdir, enabled=config.get("tensorboard", True))
  evaluator = _make_evaluator(config, setup)

  step = int(jax.device_get(state.step))
  writer.write_run_info(step, {"peak_flops_per_device": meter.peak,
                               "peak_source": meter.peak_source,
                               "devices": jax.device_count(),
                               "processes": jax.process_count()})
  profiler = Profiler(config.get("profile", None), workdir)
  last, last_eval = {}, {}
  batches_read = 0
  meter.restart()
  try:
    with Preemption() as preemption:
      while step < tc.num_steps:
        profiler.before_step(step)
        with meter.phase("data"):
          host_batch = next(data_iter)
          batches_read += 1
          _log_data_summary(config, data_iter, batches_read)
          health.check_sample_lengths(host_batch["segment_ids"],
                                      config.model.get("max_sample_tokens", 0), step)
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
          health.check_visual_fit(m, config.model.get("max_visual_tokens", 0))
          health.check_finite(m, step, manager.latest_step())
        if log_now:
          health.check_supervised_fit(m, config.model.max_supervised_tokens)
          m.update(meter.measure())
          m.update(pipeline_metrics(data_iter))
          writer.write(step, m)
          last = m
        if save_now:
          with meter.phase("checkpoint"):
            writer.flush()
            checkpointing.save(manager, step, state, data_iter, force=preempted)
        if evaluator and (step % config.eval_every == 0 or step == tc.num_steps):
          with meter.phase("eval"):
            last_eval = evaluator.run(state.params, step=step, workdir=workdir)
          writer.write(step, last_eval, prefix="eval")
        if preempted:
          logging.warning("Preemption: saved step %d, exiting.", step)
          print(f"Preemption notice: saved checkpoint at step {step} on every process, "
                "exiting.", flush=True)
          break
  finally:
    profiler.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()
  return {"train": last, "eval": last_eval, "step": step}
