"""AdamW, the learning-rate schedule and the per-stage trainable sets (NEO_SPEC §4).

Frozen parameters go through ``optax.set_to_zero`` inside
``optax.multi_transform``, so they carry no optimizer state and never change;
the global-norm clip sees the trainable gradients only.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import ml_collections
import optax
from flax import traverse_util

# NEO_SPEC §4, stage 1: the patch embedder, the pre-Buffer and the H/W QK
# parameters of the post-LLM layers.
STAGE1_TRAINABLE = (
    r"^vision_model/",
    r"^prebuffer/",
    r"^llm/layers/self_attn/(q_proj_hw|k_proj_hw|q_norm_h|q_norm_w|k_norm_h|k_norm_w)/",
)
# The release's stage-1 name filter also matches "lm_head" (it contains "_h").
# With tied embeddings the head is ``embed_tokens``.
RELEASE_LM_HEAD = (r"^lm_head/", r"^embed_tokens/")


def path_str(path: tuple) -> str:
  """``('llm', 'layers', 'mlp', 'up_proj', 'kernel') -> 'llm/layers/mlp/up_proj/kernel'``."""
  return "/".join(str(p) for p in path)


def trainable_patterns(train_cfg: ml_collections.ConfigDict, tied: bool) -> tuple[str, ...] | None:
  """Regexes of trainable parameter paths; None = everything trains.

  ``train_cfg.trainable``: "all", "stage1", or a comma-separated list of
  regexes. ``train_cfg.release_stage1_lm_head`` adds the release's lm_head.

  Raises:
    ValueError: an invalid regex (names the pattern).
  """
  spec = train_cfg.get("trainable", "all")
  if spec == "all":
    return None
  pats = list(STAGE1_TRAINABLE) if spec == "stage1" else [p for p in spec.split(",") if p]
  if spec == "stage1" and train_cfg.get("release_stage1_lm_head", False):
    pats.append(RELEASE_LM_HEAD[1] if tied else RELEASE_LM_HEAD[0])
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


def learning_rate_schedule(train_cfg: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up from ``lr / warmup`` (so step 0 already updates), cosine decay to ``lr * min_lr_ratio`` at ``num_steps``.

  Warm-up length: ``warmup_steps`` if > 0, else ``warmup_ratio * num_steps``.
  """
  total = int(train_cfg.num_steps)
  warm = int(train_cfg.warmup_steps) or int(round(train_cfg.warmup_ratio * total))
  warm = max(1, min(warm, total - 1)) if total > 1 else 0
  return optax.warmup_cosine_decay_schedule(
      init_value=train_cfg.lr / max(warm, 1), peak_value=train_cfg.lr, warmup_steps=warm,
      decay_steps=max(total, warm + 1), end_value=train_cfg.lr * train_cfg.min_lr_ratio)


def make_optimizer(train_cfg: ml_collections.ConfigDict, params: Any,
                   patterns: tuple[str, ...] | None) -> optax.GradientTransformation:
  """AdamW (b1, b2, eps, weight decay from the config) + global-norm clip on the
  trainable parameters; ``set_to_zero`` on the frozen ones."""
  sched = learning_rate_schedule(train_cfg)
  adamw = optax.chain(
      optax.clip_by_global_norm(train_cfg.grad_clip) if train_cfg.grad_clip else optax.identity(),
      optax.adamw(sched, b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps,
                  weight_decay=train_cfg.weight_decay, mask=decay_mask),
  )
  mask = trainable_mask(params, patterns)
  labels = jax.tree_util.tree_map(lambda m: "train" if m else "freeze", mask)
  return optax.multi_transform({"train": adamw, "freeze": optax.set_to_zero()}, labels)
