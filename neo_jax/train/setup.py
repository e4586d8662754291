"""Everything a training run builds once: model, mesh, shardings, optimizer, jitted step.

``Setup(config)`` is shared by the trainer, the AOT planner (``neo_jax.aot``, which
passes a mesh of compile-only TPU devices) and the tests. Each piece is built by
a named function of this module, in this order: model (``build_model``), mesh
and logical rules, parameter shardings (``abstract_params``), optimizer and its
state shardings (``_optimizer_pieces``), batch shardings, the jitted step
(``_jit_train_step``).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from neo_jax.core import host_memory
from neo_jax.core.batch import batch_shapes
from neo_jax.model import shapes as model_shapes
from neo_jax.model.model_config import ModelConfig
from neo_jax.model.neo import NEO
from neo_jax.train import optimizer, sharding
from neo_jax.train.step import TrainState, train_step


def build_model(config: ml_collections.ConfigDict) -> NEO:
  """The model of ``config.model``: the run's ``ConfigDict`` becomes the typed
  ``ModelConfig`` here, once.

  Raises:
    ValueError: an unknown key or a bad value in ``config.model`` (``ModelConfig``).
  """
  return NEO(ModelConfig.from_config_dict(config.model))


_dummy_inputs = model_shapes.dummy_inputs
abstract_params = model_shapes.abstract_params


def _optimizer_pieces(config, model_cfg: ModelConfig, abs_params, param_shardings, mesh):
  """(trainable patterns, trainable mask, tx, lr schedule, opt-state shardings)."""
  patterns = optimizer.trainable_patterns(config.train, model_cfg.tie_word_embeddings)
  trainable = optimizer.trainable_mask(abs_params, patterns)
  tx = optimizer.make_optimizer(config.train, abs_params, patterns, model_cfg)
  abs_opt = jax.eval_shape(tx.init, abs_params)
  opt_shardings = sharding.state_shardings_like_params(abs_opt, abs_params, param_shardings, mesh)
  return patterns, trainable, tx, optimizer.learning_rate_schedule(config.train), abs_opt, \
      opt_shardings


class Setup:
  """Everything the loop needs, built once: model, mesh, shardings, jitted step.

  Attributes:
    config, model, mesh, rules: the run's config, ``NEO`` module, device mesh and
      logical-axis rules.
    param_shardings, state_shardings, batch_shardings: ``NamedSharding`` pytrees.
    abstract_state: ``TrainState`` of ``ShapeDtypeStruct`` with shardings.
    patterns, trainable, tx, lr_schedule: trainable set and optimizer.
    train_step: jitted ``(state, batch) -> (state, metrics)``, state donated.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None):
    self.config = config
    self.model = build_model(config)
    self.mesh = mesh or sharding.make_mesh(
        dict(config.mesh), dcn_shape=dict(config.get("dcn_mesh", {})) or None)
    self.rules = sharding.rules_from_config(config.sharding_rules)
    boxed = abstract_params(self.model)
    self.param_shardings = sharding.logical_shardings(boxed, self.mesh, self.rules)
    abs_params = nn.meta.unbox(boxed)
    (self.patterns, self.trainable, self.tx, self.lr_schedule, abs_opt,
     opt_shardings) = _optimizer_pieces(config, self.model.config, abs_params, self.param_shardings, self.mesh)
    self.state_shardings = TrainState(step=sharding.replicated(self.mesh),
                                      params=self.param_shardings, opt_state=opt_shardings)
    abs_state = TrainState(jax.ShapeDtypeStruct((), jnp.int32), abs_params, abs_opt)
    self.abstract_state = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abs_state,
        self.state_shardings)
    shapes = batch_shapes(config.batch_size, config.seq_len, self.model.config.patch_size)
    self.batch_shardings = {k: sharding.batch_sharding(self.mesh, self.rules, len(s))
                            for k, (s, _) in shapes.items()}
    self.train_step = self._jit_train_step()

  def _jit_train_step(self):
    step_fn = functools.partial(train_step, model=self.model, tx=self.tx,
                                grad_accum_steps=self.config.train.grad_accum_steps,
                                trainable=self.trainable, lr_schedule=self.lr_schedule,
                                loss_normalization=self.config.train.get("loss_normalization",
                                                                         "global"))

    def step_with_rules(state, batch):
      # The abstract mesh in context is what makes Flax's logical activation
      # constraints (``nn.with_logical_constraint``) real: without one they are
      # silently dropped and XLA alone decides the activation layout (no
      # ``length -> context`` sharding, whole-batch temporaries on a pod).
      with nn.logical_axis_rules(self.rules), \
          jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):
        return step_fn(state, batch)

    return jax.jit(step_with_rules,
                   in_shardings=(self.state_shardings, self.batch_shardings),
                   out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
                   donate_argnums=(0,))

  def abstract_batch(self, seq_len: int | None = None) -> dict:
    """``ShapeDtypeStruct``s of one global batch with the step's shardings.

    Args:
      seq_len: [tokens per row], default ``config.seq_len`` (a context phase's length
        otherwise, ``context_schedule.py``).
    """
    c = self.config
    return {k: jax.ShapeDtypeStruct(s, d, sharding=self.batch_shardings[k])
            for k, (s, d) in batch_shapes(c.batch_size, seq_len or c.seq_len,
                                          self.model.config.patch_size).items()}

  def compile_train_step(self, log=print, seq_len: int | None = None):
    """Compiles the step ahead of the first batch, saying so and how long it took.

    Args:
      log: receives the two progress lines; seq_len: as ``abstract_batch``.
    Returns:
      The ``jax.stages.Compiled`` step (same signature as ``train_step``) for batches
      of ``[batch_size, seq_len]``.
    """
    what = f" for {seq_len}-token rows" if seq_len and seq_len != self.config.seq_len else ""
    log(f"Compiling the train step{what} ...")
    t0 = time.perf_counter()
    compiled = self.train_step.lower(self.abstract_state,
                                     self.abstract_batch(seq_len)).compile()
    # The compiler's freed host memory goes back to the system before the first step.
    host_memory.release_host_memory()
    log(f"Compiling the train step{what} ... done in {time.perf_counter() - t0:.1f} s")
    return compiled

  def init_state(self, seed: int) -> TrainState:
    """Fresh sharded state (parameters created directly in their shards)."""
    def init():
      with nn.logical_axis_rules(self.rules):
        params = nn.meta.unbox(self.model.init(jax.random.PRNGKey(seed),
                                               *_dummy_inputs(self.model.config))["params"])
      return TrainState(jnp.zeros((), jnp.int32), params, self.tx.init(params))
    # Dispatch is asynchronous: wait for the init program, so that its temporaries
    # (the random draws behind every kernel) are freed before glibc is asked to give
    # them back; trimmed earlier, they stayed resident until the compile's trim (0.55 GB
    # on issue 28's config A, held through the first steps of a step jitted by hand).
    state = jax.block_until_ready(jax.jit(init, out_shardings=self.state_shardings)())
    host_memory.release_host_memory()  # the init's freed host blocks, before the step's
    return state

  def state_from_params(self, params: Any) -> TrainState:
    """State with given parameters (e.g. imported weights) and fresh optimizer.

    Each leaf is cast to this run's parameter dtype (``model.param_dtype``): a
    checkpoint stored in bfloat16 (``neo_jax.convert import-* --dtype=bfloat16``)
    still gets float32 master weights and Adam moments.

    Raises:
      ValueError: the tree's structure or a leaf's shape differs from the model's,
        naming the leaf.
    """
    want = self.abstract_state.params
    if jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(want):
      raise ValueError("The given parameters do not have this model's tree (check "
                       "checkpoint.init_from against the config's model sizes).")

    def cast(path, x, a):
      if tuple(np.shape(x)) != tuple(a.shape):
        raise ValueError(f"Parameter {jax.tree_util.keystr(path)} has shape {np.shape(x)}, "
                         f"the config expects {a.shape}.")
      return np.asarray(x).astype(a.dtype) if np.dtype(x.dtype) != a.dtype else x

    params = jax.tree_util.tree_map_with_path(cast, params, want)
    params = jax.device_put(params, self.param_shardings)
    opt = jax.jit(self.tx.init, out_shardings=self.state_shardings.opt_state)(params)
    return TrainState(jax.device_put(jnp.zeros((), jnp.int32), self.state_shardings.step),
                      params, opt)

  def global_batch(self, local: dict) -> dict:
    """Process-local numpy batch -> global sharded arrays."""
    return {k: jax.make_array_from_process_local_data(self.batch_shardings[k], np.asarray(v))
            for k, v in local.items()}
