"""The training job: mesh, sharded state, data, jitted step, checkpoints, logs.

``run(config, workdir)`` is what ``python -m neo_jax.train`` calls. The same
code path runs on one CPU and on a TPU pod: every array is a global
``jax.Array`` laid out by the logical-axis rules of ``config.sharding_rules``.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from neo_jax.model import config as model_config_lib
from neo_jax.model.inputs import batch_shapes
from neo_jax.model.neo import NEO
from neo_jax.train import checkpointing, flops, optimizer, sharding
from neo_jax.train.step import TrainState, train_step


class NonFiniteLossError(RuntimeError):
  """Raised when a step's loss or gradient norm is NaN / inf."""


def build_model(config: ml_collections.ConfigDict) -> NEO:
  model_config_lib.validate(config.model)
  return NEO(config.model)


def _dummy_inputs(model_cfg, seq_len: int = 8):
  shapes = batch_shapes(1, seq_len, model_cfg.patch_size)
  return [jnp.zeros(*shapes[k]) for k in ("input_ids", "segment_ids", "token_hw", "pixel_values")]


def abstract_params(model: NEO) -> Any:
  """Boxed (``nn.Partitioned``) abstract parameters: shapes + logical axes, no memory."""
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *_dummy_inputs(model.config)))["params"]


class Setup:
  """Everything the loop needs, built once: model, mesh, shardings, jitted step."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None):
    self.config = config
    self.model = build_model(config)
    self.mesh = mesh or sharding.make_mesh(dict(config.mesh), dcn_shape=dict(config.get("dcn_mesh", {})) or None)
    self.rules = sharding.rules_from_config(config.sharding_rules)
    boxed = abstract_params(self.model)
    self.param_shardings = sharding.logical_shardings(boxed, self.mesh, self.rules)
    abs_params = nn.meta.unbox(boxed)
    tied = config.model.tie_word_embeddings
    self.patterns = optimizer.trainable_patterns(config.train, tied)
    self.trainable = optimizer.trainable_mask(abs_params, self.patterns)
    self.tx = optimizer.make_optimizer(config.train, abs_params, self.patterns)
    self.lr_schedule = optimizer.learning_rate_schedule(config.train)
    abs_opt = jax.eval_shape(self.tx.init, abs_params)
    opt_shardings = sharding.state_shardings_like_params(abs_opt, abs_params,
                                                         self.param_shardings, self.mesh)
    self.state_shardings = TrainState(step=sharding.replicated(self.mesh),
                                      params=self.param_shardings, opt_state=opt_shardings)
    abs_state = TrainState(jax.ShapeDtypeStruct((), jnp.int32), abs_params, abs_opt)
    self.abstract_state = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abs_state, self.state_shardings)
    shapes = batch_shapes(config.batch_size, config.seq_len, config.model.patch_size)
    self.batch_shardings = {k: sharding.batch_sharding(self.mesh, self.rules, len(s))
                            for k, (s, _) in shapes.items()}
    step_fn = functools.partial(train_step, model=self.model, tx=self.tx,
                                grad_accum_steps=config.train.grad_accum_steps,
                                trainable=self.trainable, lr_schedule=self.lr_schedule)

    def step_with_rules(state, batch):
      # The abstract mesh in context is what makes Flax's logical activation
      # constraints (``nn.with_logical_constraint``) real: without one they are
      # silently dropped and XLA alone decides the activation layout (no
      # ``length -> context`` sharding, whole-batch temporaries on a pod).
      with nn.logical_axis_rules(self.rules), jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):
        return step_fn(state, batch)

    self.train_step = jax.jit(step_with_rules,
                              in_shardings=(self.state_shardings, self.batch_shardings),
                              out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
                              donate_argnums=(0,))

  def init_state(self, seed: int) -> TrainState:
    """Fresh sharded state (parameters created directly in their shards)."""
    def init():
      with nn.logical_axis_rules(self.rules):
        params = nn.meta.unbox(self.model.init(jax.random.PRNGKey(seed),
                                               *_dummy_inputs(self.model.config))["params"])
      return TrainState(jnp.zeros((), jnp.int32), params, self.tx.init(params))
    return jax.jit(init, out_shardings=self.state_shardings)()

  def state_from_params(self, params: Any) -> TrainState:
    """State with given parameters (e.g. imported weights) and fresh optimizer."""
    params = jax.device_put(params, self.param_shardings)
    opt = jax.jit(self.tx.init, out_shardings=self.state_shardings.opt_state)(params)
    return TrainState(jax.device_put(jnp.zeros((), jnp.int32), self.state_shardings.step), params, opt)

  def global_batch(self, local: dict) -> dict:
    """Process-local numpy batch -> global sharded arrays."""
    return {k: jax.make_array_from_process_local_data(self.batch_shardings[k], np.asarray(v))
            for k, v in local.items()}


def make_data_iterator(config: ml_collections.ConfigDict):
  """The process-local training iterator named by ``config.data.kind``.

  Raises:
    ValueError: global batch not divisible by the process count, or unknown kind.
  """
  pc, pi = jax.process_count(), jax.process_index()
  if config.batch_size % pc:
    raise ValueError(f"batch_size={config.batch_size} is not divisible by {pc} processes.")
  local_bs = config.batch_size // pc
  m = config.model
  if config.data.kind == "random":
    from neo_jax.data import random_batches  # pylint: disable=g-import-not-at-top
    return random_batches.make_random_iterator(
        batch_size=local_bs, seq_len=config.seq_len, vocab_size=m.vocab_size,
        img_start_id=m.img_start_token_id, img_context_id=m.img_context_token_id,
        img_end_id=m.img_end_token_id, seed=config.train.seed, process_index=pi)
  if config.data.kind == "pipeline":
    from neo_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    return pipeline.make_train_iterator(
        config.data, seq_len=config.seq_len, batch_size=local_bs,
        max_supervised_tokens=m.max_supervised_tokens, seed=config.train.seed,
        process_index=pi, process_count=pc)
  raise ValueError(f"Unknown data.kind {config.data.kind!r}; use 'pipeline' or 'random'.")


def _skip_counts(data_iter) -> dict:
  try:
    from neo_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    return dict(pipeline.skip_counts(data_iter))
  except (ImportError, AttributeError, TypeError, ValueError):
    return {}


class MetricWriter:
  """Console (absl) + TensorBoard event files; writes from process 0 only."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.active = jax.process_index() == 0
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
    text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
    logging.info("[%s] step %d %s", prefix, step, text)
    print(f"[{prefix}] step {step} {text}", flush=True)
    self.jsonl.write(json.dumps({"step": step, "kind": prefix, **metrics}) + "\n")
    self.jsonl.flush()
    if self.tb is not None:
      for k, v in metrics.items():
        if isinstance(v, (int, float)):
          self.tb.add_scalar(f"{prefix}/{k}", v, step)
      self.tb.flush()

  def close(self):
    if self.jsonl:
      self.jsonl.close()
    if self.tb:
      self.tb.close()


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains until ``config.train.num_steps``; resumes from the newest checkpoint.

  Returns:
    The last logged train metrics and, if run, the last eval metrics.

  Raises:
    NonFiniteLossError: a non-finite loss or gradient norm (the last good
      checkpoint is left untouched).
    ValueError: inconsistent config (batch not divisible, etc.).
  """
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  setup = Setup(config)
  tc = config.train
  if config.batch_size % tc.grad_accum_steps:
    raise ValueError(f"batch_size={config.batch_size} not divisible by grad_accum_steps={tc.grad_accum_steps}.")
  data_iter = make_data_iterator(config)
  manager = checkpointing.make_manager(workdir, keep=config.checkpoint.keep,
                                       async_save=config.checkpoint.async_save)
  latest = manager.latest_step()
  if latest is not None:
    saved_pc = _saved_process_count(workdir, latest)
    if saved_pc not in (None, jax.process_count()):
      # Orbax reshards the arrays to any mesh; Grain iterator states are per
      # process and do not map onto another process count: the data stream
      # restarts (from each process's new slice) and the step count goes on.
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
  elif config.checkpoint.get("init_from"):
    from neo_jax.convert import orbax_io  # pylint: disable=g-import-not-at-top
    state = setup.state_from_params(orbax_io.load_params(config.checkpoint.init_from))
  else:
    state = setup.init_state(tc.seed)

  peak = config.get("peak_flops_per_device", 0.0) or flops.measure_peak_flops(config.model.dtype)
  avg_keys = config.get("avg_visible_keys", 0) or config.seq_len / 4
  writer = MetricWriter(workdir, enabled=config.get("tensorboard", True))
  stop = {"sigterm": False}
  prev_handler = signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("sigterm", True)) \
      if _in_main_thread() else None

  evaluator = None
  if config.get("eval_every", 0):
    from neo_jax.train import evaluate  # pylint: disable=g-import-not-at-top
    evaluator = evaluate.Evaluator(config, setup)

  step = int(jax.device_get(state.step))
  last, last_eval = {}, {}
  t_last, steps_since = time.perf_counter(), 0
  try:
    while step < tc.num_steps:
      batch = setup.global_batch(next(data_iter))
      state, metrics = setup.train_step(state, batch)
      step += 1
      steps_since += 1
      save_now = (step % config.checkpoint.every_steps == 0 or step == tc.num_steps
                  or stop["sigterm"])
      log_now = step % config.log_every == 0 or step == tc.num_steps
      if log_now or save_now:
        # Checked before every save too, so a non-finite state is never saved.
        m = {k: v.item() for k, v in jax.device_get(metrics).items()}
        if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"]) and m["params_finite"]):
          raise NonFiniteLossError(
              f"Non-finite loss={m['loss']} grad_norm={m['grad_norm']} "
              f"params_finite={m['params_finite']} at step {step}; "
              f"stopping without saving. The last good checkpoint is step {manager.latest_step()}. "
              "Lower the learning rate or check the data (skip counts in metrics.jsonl).")
      if log_now:
        if m["dropped_supervised"]:
          raise ValueError(f"{m['dropped_supervised']} supervised tokens did not fit in "
                           f"model.max_supervised_tokens={config.model.max_supervised_tokens}; "
                           "raise it or let the packer enforce it.")
        dt = (time.perf_counter() - t_last) / steps_since
        head_frac = (m["supervised_tokens"] / max(m["tokens"], 1)
                     if config.model.max_supervised_tokens else 1.0)
        fpt = flops.train_flops_per_token(config.model, avg_visible_keys=avg_keys,
                                          head_fraction=head_frac)
        tok_s = m["tokens"] / dt
        m.update(step_time_s=dt, tokens_per_s=tok_s,
                 mfu=fpt * tok_s / (peak * jax.device_count()))
        m.update({f"skipped/{k}": v for k, v in _skip_counts(data_iter).items()})
        writer.write(step, m)
        last = m
        t_last, steps_since = time.perf_counter(), 0
      if save_now:
        checkpointing.save(manager, step, state, data_iter, force=stop["sigterm"])
      if evaluator and (step % config.eval_every == 0 or step == tc.num_steps):
        last_eval = evaluator.run(state.params)
        writer.write(step, last_eval, prefix="eval")
        t_last = time.perf_counter()
      if stop["sigterm"]:
        logging.warning("SIGTERM: saved step %d, exiting.", step)
        print(f"SIGTERM received: saved checkpoint at step {step}, exiting.", flush=True)
        break
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.close()
    if prev_handler is not None:
      signal.signal(signal.SIGTERM, prev_handler)
  return {"train": last, "eval": last_eval, "step": step}


def _saved_process_count(workdir: str, step: int) -> int | None:
  """Process count of the Grain states saved at ``step`` (files
  ``data/process_<i>-of-<n>.json``), or None when there are none."""
  import re  # pylint: disable=g-import-not-at-top
  d = os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "data")
  counts = {int(m.group(1)) for f in (os.listdir(d) if os.path.isdir(d) else [])
            if (m := re.fullmatch(r"process_\d+-of-(\d+)\.json", f))}
  return counts.pop() if len(counts) == 1 else None


def _in_main_thread() -> bool:
  import threading  # pylint: disable=g-import-not-at-top
  return threading.current_thread() is threading.main_thread()
