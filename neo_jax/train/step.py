"""The jitted train step: gradient accumulation, weighted loss, AdamW update.

Pure functions of (state, batch). With ``loss_normalization="global"`` (the
default) the loss of a step is ``sum(w * ce) / sum(w)`` over the whole global
batch, exactly, whatever the number of micro-batches or devices (docs/design.md §3.5):
every micro-batch returns sums, the gradient of ``sum(w * ce)`` is accumulated
and divided by the global ``sum(w)`` once. With ``"per_sequence"`` (the
release's: its ``loss_function`` normalises each device's packed sequence, then
DDP and gradient accumulation average) each row's weights are divided by their
row sum and the step divides by the number of rows: the loss is the mean over
sequences of each sequence's own normalised loss.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from neo_jax.core import host_memory
from neo_jax.model import loss as loss_lib
from neo_jax.model import positions as pos_lib
from neo_jax.model import visual_gather
from neo_jax.model.model_config import ModelConfig
from neo_jax.model.neo import NEO, head_weights
from neo_jax.train import flops


# A step compiled by hand (``jax.jit(train_step)``) gets the compiler's freed host memory
# back before its first run, as ``Setup.compile_train_step`` does.
host_memory.trim_after_long_compiles()


class TrainState(flax.struct.PyTreeNode):
  """``step`` (int32 scalar), ``params`` (fp32 pytree), ``opt_state``."""
  step: jax.Array
  params: Any
  opt_state: Any


def loss_sums(params: Any, batch: dict, model: NEO,
              normalization: str = "global") -> loss_lib.LossOutput:
  """Forward + chunked loss of one (micro-)batch; returns summable terms."""
  cfg = model.config
  hidden = model.apply({"params": params}, batch["input_ids"], batch["segment_ids"],
                       batch["token_hw"], batch["pixel_values"], return_hidden=True)
  head, layout = head_weights(params, cfg)
  return loss_lib.lm_loss(hidden, head, batch["labels"], batch["segment_ids"], head_layout=layout,
                          mode=cfg.loss_weighting, chunk=cfg.loss_vocab_chunk,
                          max_supervised_tokens=cfg.max_supervised_tokens,
                          normalization=normalization, vocab_ids=cfg.vocab_ids)


def _split_micro(batch: dict, k: int) -> dict:
  """``[B, ...] -> [k, B / k, ...]`` taking every k-th row, so each device keeps
  an equal share of every micro-batch (rows stay on their device)."""
  def split(x):
    b = x.shape[0]
    return x.reshape((b // k, k) + x.shape[1:]).swapaxes(0, 1)
  return jax.tree_util.tree_map(split, batch)


def train_step(state: TrainState, batch: dict, *, model: NEO, tx: optax.GradientTransformation,
               grad_accum_steps: int, trainable: Any, lr_schedule,
               loss_normalization: str = "global") -> tuple[TrainState, dict]:
  """One optimizer step.

  Jit it with the state donated (``donate_argnums=(0,)``, as ``Setup.train_step``):
  without donation the old and the new state (parameters and both Adam moments) are
  alive together, one state more at the peak (0.95 GiB on issue 28's config A, a
  151,936-token vocabulary at width 256; ``bench/train_step_memory.py``).

  Args:
    state: current ``TrainState``.
    batch: global batch (``neo_jax.core.batch``), batch axis divisible by
      ``grad_accum_steps``.
    model: the ``NEO`` module; tx: the optimizer; trainable: pytree of bools
      (the grad norm is reported over trainable parameters); lr_schedule:
      for logging; loss_normalization: "global" | "per_sequence" (module docstring).

  Returns:
    (new state, metrics dict of scalars: loss, grad_norm, lr,
    supervised_tokens, tokens, visual_tokens, attention_pairs,
    dropped_supervised, dropped_visual, params_finite).
  """
  cfg = model.config
  k = grad_accum_steps
  # Global sum of weights: needs no forward.
  if loss_normalization == "per_sequence":
    total_w = jnp.asarray(batch["labels"].shape[0], jnp.float32)
  else:
    t = loss_lib.make_targets(batch["labels"], batch["segment_ids"], mode=cfg.loss_weighting,
                              max_supervised_tokens=cfg.max_supervised_tokens,
                              normalization=loss_normalization)
    total_w = jnp.maximum(jnp.sum(t.weight), 1e-9)

  def objective(params, mb):
    # Divided here rather than the gradients afterwards: the same numbers, without a
    # pass over (and a copy of) every gradient, vocabulary-sized ones included.
    out = loss_sums(params, mb, model, loss_normalization)
    return out.weighted_ce / total_w, out

  grad_fn = jax.value_and_grad(objective, has_aux=True)

  if k == 1:
    (_, out), grads = grad_fn(state.params, batch)
  else:
    micro = _split_micro(batch, k)

    def body(acc, mb):
      g_acc, o_acc = acc
      mb = jax.tree_util.tree_map(
          lambda x: nn.with_logical_constraint(x, ("batch", "length") + (None,) * (x.ndim - 2)), mb)
      (_, o), g = grad_fn(state.params, mb)
      return (jax.tree_util.tree_map(jnp.add, g_acc, g),
              jax.tree_util.tree_map(jnp.add, o_acc, o)), None

    zeros_g = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    zeros_o = loss_lib.LossOutput(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32),
                                  jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
    (grads, out), _ = jax.lax.scan(body, (zeros_g, zeros_o), micro)

  tr_grads = jax.tree_util.tree_map(lambda g, m: g if m else jnp.zeros_like(g), grads, trainable)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "loss": out.weighted_ce / total_w,
      "grad_norm": optax.tree.norm(tr_grads),
      "lr": lr_schedule(state.step),
      "supervised_tokens": out.tokens,
      "tokens": jnp.sum(batch["segment_ids"] > 0),
      # Counts behind the model FLOPs (``flops.StepFlops``).
      "visual_tokens": jnp.sum((batch["input_ids"] == cfg.img_context_token_id)
                               & (batch["segment_ids"] > 0)),
      "attention_pairs": flops.attention_pairs(
          batch["segment_ids"], pos_lib.unit_ids(batch["input_ids"],
                                                 img_start_id=cfg.img_start_token_id,
                                                 img_context_id=cfg.img_context_token_id)),
      "dropped_supervised": out.dropped,
      "dropped_visual": visual_gather.dropped_visual(
          batch["input_ids"] == cfg.img_context_token_id, cfg.max_visual_tokens),
      # The loss above is of the old parameters; this guards the new ones, so a
      # step that produced inf / NaN parameters is never checkpointed.
      # max |x| is NaN / inf iff an entry is: one reduction per leaf, no [V, D] mask.
      "params_finite": jnp.all(jnp.asarray(
          [jnp.isfinite(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(params)])),
  }
  return TrainState(state.step + 1, params, opt_state), metrics
