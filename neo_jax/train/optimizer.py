"""AdamW, the learning-rate schedules and the per-stage trainable sets (docs/design.md §4).

Frozen parameters go through ``optax.set_to_zero`` inside
``optax.multi_transform``, so they carry no optimizer state and never change;
the global-norm clip sees the trainable gradients only.
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

# docs/design.md §4.3, stage 1 (the paper's set, ``trainable="stage1"``): the patch embedder,
# the whole pre-Buffer and the H/W QK parameters of the post-LLM layers.
STAGE1_TRAINABLE = (
    r"^vision_model/",
    r"^prebuffer/",
    r"^llm/layers/self_attn/(q_proj_hw|k_proj_hw|q_norm_h|q_norm_w|k_norm_h|k_norm_w)/",
)
# What the release's stage 1 really trains (``trainable="release_stage1"``). Its
# ``set_model`` (VLMTrainKit/neo/train/train.py) keeps a parameter iff its name has
# "_h", "_w" or "_hw", or "vision_model", or ``parts[2]`` is a layer index below
# ``extra_num_layers``. Its names are ``language_model.model.layers.N...``, so
# ``parts[2]`` is "layers" and the index test never fires: the pre-Buffer trains only
# its H/W parameters, like the post-LLM. "lm_head" contains "_h", so an untied head
# trains; a tied head appears in ``named_parameters()`` only as
# ``embed_tokens.weight`` and stays frozen.
RELEASE_STAGE1_TRAINABLE = (
    r"^vision_model/",
    r"^(prebuffer|llm)/layers/self_attn/(q_proj_hw|k_proj_hw|q_norm_h|q_norm_w|k_norm_h|k_norm_w)/",
    r"^lm_head/",
)
NAMED_SETS = {"stage1": STAGE1_TRAINABLE, "release_stage1": RELEASE_STAGE1_TRAINABLE}
DECAY_MASKS = ("norms_and_biases", "release")
# transformers 4.57.1 ``Trainer.get_decay_parameter_names``: names (lower-cased) that
# get no weight decay. They miss the H/W norm gains (``q_norm_h.weight``), so the
# release decays those.
RELEASE_NO_DECAY = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")


def path_str(path: tuple) -> str:
  """``('llm', 'layers', 'mlp', 'up_proj', 'kernel') -> 'llm/layers/mlp/up_proj/kernel'``."""
  return "/".join(str(p) for p in path)


def trainable_patterns(train_cfg: ml_collections.ConfigDict,
                       tied: bool | None = None) -> tuple[str, ...] | None:
  """Regexes of trainable parameter paths; None = everything trains.

  ``train_cfg.trainable``: "all"; "stage1" (the paper's stage-1 set,
  ``STAGE1_TRAINABLE``); "release_stage1" (what the release's filter trains,
  ``RELEASE_STAGE1_TRAINABLE``); or a comma-separated list of regexes over paths
  such as ``llm/layers/mlp/up_proj/kernel``. ``tied`` is unused (kept for callers:
  the release set needs no special case, a tied model has no ``lm_head``).

  Raises:
    ValueError: an invalid regex (names the pattern), or the removed
      ``train.release_stage1_lm_head`` option set.
  """
  del tied
  if train_cfg.get("release_stage1_lm_head", False):
    raise ValueError("train.release_stage1_lm_head was removed: use "
                     "train.trainable='release_stage1' (the release's stage-1 set).")
  spec = train_cfg.get("trainable", "all")
  if spec == "all":
    return None
  pats = list(NAMED_SETS[spec]) if spec in NAMED_SETS else [p for p in spec.split(",") if p]
  for p in pats:
    try:
      re.compile(p)
    except re.error as e:
      raise ValueError(f"train.trainable pattern {p!r} is not a valid regex: {e}") from e
  return tuple(pats)


def trainable_mask(params: Any, patterns: tuple[str, ...] | None) -> Any:
  """Pytree of bools (same structure as ``params``): True where the path matches.

  Raises:
    ValueError: patterns that match no parameter (a typo would freeze all).
  """
  flat = traverse_util.flatten_dict(params)
  if patterns is None:
    return traverse_util.unflatten_dict({k: True for k in flat})
  mask = {k: any(re.search(p, path_str(k)) for p in patterns) for k in flat}
  if not any(mask.values()):
    raise ValueError(f"No parameter matches the trainable patterns {patterns}.")
  return traverse_util.unflatten_dict(mask)


def decay_mask(params: Any) -> Any:
  """True for weights that get weight decay: everything but norm scales and biases."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict(
      {k: k[-1] not in ("scale", "bias") for k in flat})


def release_decay_mask(params: Any, model_cfg: ml_collections.ConfigDict) -> Any:
  """The release's decay set: transformers' no-decay name patterns
  (``RELEASE_NO_DECAY``) applied to each parameter's release name
  (``convert.param_mapping``). Norm scales with a plain name (``q_norm``,
  ``input_layernorm``, ``model.norm``) and biases get none; the H/W norm gains
  (``q_norm_h`` ...) and everything else decay.

  Raises:
    KeyError: a parameter without a release name (a model variant the release
      lacks).
  """
  from neo_jax.convert import param_mapping  # pylint: disable=g-import-not-at-top
  names = {leaf.path: leaf.keys[0] for leaf in param_mapping.leaves(model_cfg)}
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict(
      {k: not any(re.search(p, names[k].lower()) for p in RELEASE_NO_DECAY) for k in flat})


def weight_decay_mask(train_cfg: ml_collections.ConfigDict, params: Any,
                      model_cfg: ml_collections.ConfigDict | None = None) -> Any:
  """The decay mask ``train_cfg.weight_decay_mask`` names.

  "norms_and_biases" (default; ``decay_mask``): no decay for any norm scale or
  bias. "release": ``release_decay_mask`` (needs ``model_cfg``).

  Raises:
    ValueError: an unknown mask name.
  """
  kind = train_cfg.get("weight_decay_mask", "norms_and_biases")
  if kind == "norms_and_biases":
    return decay_mask(params)
  if kind == "release":
    return release_decay_mask(params, model_cfg)
  raise ValueError(f"train.weight_decay_mask={kind!r} is not one of {DECAY_MASKS}.")


# ``train.lr_schedule``: "warmup_cosine" is the project's own schedule (the smoke, demo and
# ablation configs); the other two are transformers 4.57.1's, as the release's Trainer runs
# them (``SchedulerType`` names, ``transformers/optimization.py``).
SCHEDULES = ("warmup_cosine", "cosine_with_min_lr", "cosine")


def warmup_steps(train_cfg: ml_collections.ConfigDict) -> int:
  """[steps] of linear warm-up: ``warmup_steps`` if > 0, else ``ceil(warmup_ratio * num_steps)``.

  transformers 4.57.1 ``TrainingArguments.get_warmup_steps`` (training_args.py:2551-2558);
  the ``warmup_cosine`` schedule rounds instead and keeps at least one step.
  """
  if int(train_cfg.warmup_steps) > 0:
    return int(train_cfg.warmup_steps)
  total = int(train_cfg.num_steps)
  if train_cfg.get("lr_schedule", "warmup_cosine") == "warmup_cosine":
    return int(round(train_cfg.warmup_ratio * total))
  return math.ceil(total * float(train_cfg.warmup_ratio))


def _transformers_cosine(lr: float, warm: int, total: int, min_lr_rate: float) -> optax.Schedule:
  """transformers 4.57.1 ``_get_cosine_schedule_with_warmup_lr_lambda`` (optimization.py:324-332,
  ``num_cycles`` 0.5) times ``lr``, at optimizer step ``count`` (0 = the first update).

  ``count < warm``: ``lr * count / max(1, warm)`` (the first update has lr 0 when ``warm`` > 0);
  then ``lr * max(0, c * (1 - r) + r)`` with ``c = 0.5 * (1 + cos(pi * p))``,
  ``p = (count - warm) / max(1, total - warm)``, ``r = min_lr_rate``. Like transformers it is
  not clamped past ``total`` (the run stops there). ``min_lr_rate`` 0 is
  ``get_cosine_schedule_with_warmup`` (optimization.py:141-172; the module's second
  definition of the lambda, at 324, replaces the first, at 132: the same values). float32.
  """
  warm_div, decay_div = float(max(1, warm)), float(max(1, total - warm))

  def schedule(count):
    s = jnp.asarray(count, jnp.float32)
    progress = (s - warm) / decay_div
    factor = 0.5 * (1.0 + jnp.cos(jnp.pi * 0.5 * 2.0 * progress))
    factor = jnp.maximum(0.0, factor * (1.0 - min_lr_rate) + min_lr_rate)
    return lr * jnp.where(s < warm, s / warm_div, factor)
  return schedule


def learning_rate_schedule(train_cfg: ml_collections.ConfigDict) -> optax.Schedule:
  """The learning rate at optimizer step ``count`` (0 = the first update), ``train.lr_schedule``:

  * "warmup_cosine" (default): linear warm-up from ``lr / warmup`` (so step 0 already
    updates) to ``lr``, cosine decay to ``lr * min_lr_ratio`` at ``num_steps``
    (``optax.warmup_cosine_decay_schedule``).
  * "cosine_with_min_lr": transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` as
    the release runs it: ``min_lr = lr * min_lr_ratio`` (VLMTrainKit/neo/train/argument.py:70-73),
    so ``min_lr_rate = min_lr / lr`` (optimization.py:373); warm-up from 0.
  * "cosine": transformers' ``get_cosine_schedule_with_warmup``: decays to 0; ``min_lr_ratio``
    is ignored, as the release ignores ``--min_lr_ratio`` with this schedule.

  Warm-up length: ``warmup_steps``.

  Raises:
    ValueError: an unknown ``lr_schedule``.
  """
  kind = train_cfg.get("lr_schedule", "warmup_cosine")
  total = int(train_cfg.num_steps)
  lr = float(train_cfg.lr)
  if kind == "cosine_with_min_lr":
    return _transformers_cosine(lr, warmup_steps(train_cfg), total,
                                (lr * float(train_cfg.min_lr_ratio)) / lr if lr else 0.0)
  if kind == "cosine":
    return _transformers_cosine(lr, warmup_steps(train_cfg), total, 0.0)
  if kind != "warmup_cosine":
    raise ValueError(f"train.lr_schedule={kind!r} is not one of {SCHEDULES}.")
  warm = warmup_steps(train_cfg)
  warm = max(1, min(warm, total - 1)) if total > 1 else 0
  return optax.warmup_cosine_decay_schedule(
      init_value=lr / max(warm, 1), peak_value=lr, warmup_steps=warm,
      decay_steps=max(total, warm + 1), end_value=lr * train_cfg.min_lr_ratio)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """``optax.clip_by_global_norm`` with the clip applied as one multiply per leaf.

  ``t * min(1, max_norm / |g|)`` instead of optax's ``select(|g| < max_norm, t,
  (t / |g|) * max_norm)``: the same update to float rounding, and an elementwise
  multiply that XLA fuses into each consumer (the Adam moments), where the division
  (an "expensive" op XLA does not duplicate into several consumers) was materialised
  as a clipped copy of every gradient. On issue 28's config A (a 151,936-token
  vocabulary) XLA's cost analysis of the step reads / writes 1.27 GiB less
  (``bench/train_step_hlo.py``). State: ``optax.EmptyState``, as optax's.
  """
  def update_fn(updates, state, params=None):
    del params
    g_norm = optax.tree.norm(updates)
    scale = jnp.where(g_norm < max_norm, 1.0, max_norm / g_norm)
    return jax.tree_util.tree_map(lambda t: t * scale.astype(t.dtype), updates), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def make_optimizer(train_cfg: ml_collections.ConfigDict, params: Any,
                   patterns: tuple[str, ...] | None,
                   model_cfg: ml_collections.ConfigDict | None = None
                   ) -> optax.GradientTransformation:
  """AdamW (b1, b2, eps, weight decay from the config; decay mask from
  ``weight_decay_mask``) + global-norm clip on the trainable parameters;
  ``set_to_zero`` on the frozen ones."""
  sched = learning_rate_schedule(train_cfg)
  adamw = optax.chain(
      clip_by_global_norm(train_cfg.grad_clip) if train_cfg.grad_clip else optax.identity(),
      optax.adamw(sched, b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps,
                  weight_decay=train_cfg.weight_decay,
                  mask=lambda p: weight_decay_mask(train_cfg, p, model_cfg)),
  )
  mask = trainable_mask(params, patterns)
  labels = jax.tree_util.tree_map(lambda m: "train" if m else "freeze", mask)
  return optax.multi_transform({"train": adamw, "freeze": optax.set_to_zero()}, labels)
