"""Checks on a step's metrics that stop a run before it saves a bad state.

``check_finite`` runs before every save and log: a NaN / inf loss, gradient norm
or parameter stops the run without saving, so the newest checkpoint stays the
last good one. ``check_supervised_fit`` stops a run whose supervised tokens were
silently cut by ``model.max_supervised_tokens``. ``check_sample_lengths`` refuses a
host batch holding a sample longer than ``model.max_sample_tokens`` (the TPU kernel's
grid is sized by it) before it reaches the step; ``check_vocabulary`` one holding a
token id the model has no row for. ``check_prompts`` applies these limits (sample
length, token ids, visual tokens per sequence) to evaluation prompts.
"""

from __future__ import annotations

import numpy as np

from neo_jax.model import compact_vocab


class NonFiniteLossError(RuntimeError):
  """Raised when a step's loss, gradient norm or parameters are NaN / inf."""


class EvalPromptError(ValueError):
  """An evaluation prompt the model cannot take whole (too long, too many visual tokens)."""


def check_finite(metrics: dict, step: int, last_good_step: int | None) -> None:
  """Raises ``NonFiniteLossError`` (naming the step and the last good checkpoint)
  unless ``loss``, ``grad_norm`` and ``params_finite`` are all finite / true."""
  if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])
          and metrics["params_finite"]):
    raise NonFiniteLossError(
        f"Non-finite loss={metrics['loss']} grad_norm={metrics['grad_norm']} "
        f"params_finite={metrics['params_finite']} at step {step}; "
        f"stopping without saving. The last good checkpoint is step {last_good_step}. "
        "Lower the learning rate or check the data (skip counts in metrics.jsonl).")


def check_visual_fit(metrics: dict, max_visual_tokens: int) -> None:
  """Raises ValueError when a sequence held more visual tokens than the patch embedder's
  static gather (``model.max_visual_tokens``; those rows' embeddings were NaN)."""
  if metrics.get("dropped_visual"):
    raise ValueError(f"{metrics['dropped_visual']} visual tokens did not fit in "
                     f"model.max_visual_tokens={max_visual_tokens}; raise it or let the "
                     "packer enforce it (data.kind=pipeline).")


def check_supervised_fit(metrics: dict, max_supervised_tokens: int) -> None:
  """Raises ValueError when supervised tokens were dropped by the static gather."""
  if metrics.get("dropped_supervised"):
    raise ValueError(f"{metrics['dropped_supervised']} supervised tokens did not fit in "
                     f"model.max_supervised_tokens={max_supervised_tokens}; "
                     "raise it or let the packer enforce it.")


def longest_sample(segment_ids: np.ndarray) -> int:
  """Tokens of the longest packed sample: the longest run of one non-zero segment id.

  Args:
    segment_ids: ``[B, S]`` integer packed-sample ids (0 = padding).

  Returns:
    The length in tokens (0 for an all-padding batch).
  """
  seg = np.asarray(segment_ids)
  best = 0
  for row in seg.reshape(-1, seg.shape[-1]):
    cuts = np.flatnonzero(row[1:] != row[:-1]) + 1
    starts = np.concatenate([[0], cuts])
    lengths = np.diff(np.concatenate([starts, [row.size]]))
    real = row[starts] != 0
    if real.any():
      best = max(best, int(lengths[real].max()))
  return best


def check_sample_lengths(segment_ids: np.ndarray, max_sample_tokens: int, step: int) -> None:
  """Raises ValueError when a sample is longer than ``max_sample_tokens`` (0 = no cap).

  The packer drops such samples; a batch from elsewhere (a custom iterator) could
  still hold one, and the TPU kernel, whose grid is bounded by the cap, would return
  NaN for it.
  """
  if max_sample_tokens <= 0:
    return
  n = longest_sample(segment_ids)
  if n > max_sample_tokens:
    raise ValueError(f"The batch of step {step + 1} holds a sample of {n} tokens, longer than "
                     f"model.max_sample_tokens={max_sample_tokens}; raise the cap or let the "
                     "packer (data.kind=pipeline) drop such samples.")


def check_vocabulary(host_batch: dict, model_cfg, step: int) -> None:
  """Raises ValueError when the batch's ``input_ids`` or ``labels`` hold a token id the
  model has no row for (``compact_vocab.unknown_ids``: outside ``[0, vocab_size)``, or
  not in a compact ``vocab_ids``), which would otherwise train on a wrong row or make
  the loss NaN.
  """
  for key in ("input_ids", "labels"):
    bad = compact_vocab.unknown_ids(host_batch[key], model_cfg.vocab_size, model_cfg.vocab_ids)
    if bad.size:
      raise ValueError(
          f"The batch of step {step + 1} holds {key} the model has no row for: "
          f"{bad[:8].tolist()}{' ...' if bad.size > 8 else ''} (model.vocab_size="
          f"{model_cfg.vocab_size}, {len(model_cfg.vocab_ids)} model.vocab_ids); use the "
          "tokenizer the model was built for, or add the ids to model.vocab_ids.")


def check_prompts(examples, model_cfg) -> None:
  """Raises ``EvalPromptError`` for the first evaluation prompt the model would get
  wrong silently: longer than ``model.max_sample_tokens`` (each prompt is one sample of
  the prefill) or holding more ``<IMG_CONTEXT>`` tokens than ``model.max_visual_tokens``
  (the patch embedder's per-sequence gather). 0 = no cap.

  Args:
    examples: dicts with ``input_ids [n]`` (and ``task``, ``record_id`` for the message).
    model_cfg: the model config (``max_sample_tokens``, ``max_visual_tokens``,
      ``img_context_token_id``).
  """
  max_len, max_vis = int(model_cfg.max_sample_tokens), int(model_cfg.max_visual_tokens)
  for ex in examples:
    ids = np.asarray(ex["input_ids"])
    name = f"task {ex.get('task')!r}, record {ex.get('record_id')!r}"
    if max_len and ids.size > max_len:
      raise EvalPromptError(f"Evaluation prompt ({name}) has {ids.size} tokens, more than "
                            f"model.max_sample_tokens={max_len}; raise the cap or drop the "
                            "example from the held-out split.")
    bad = compact_vocab.unknown_ids(ids, model_cfg.vocab_size, model_cfg.vocab_ids)
    if bad.size:
      raise EvalPromptError(f"Evaluation prompt ({name}) holds token ids the model has no "
                            f"row for: {bad[:8].tolist()} (model.vocab_size="
                            f"{model_cfg.vocab_size}, {len(model_cfg.vocab_ids)} "
                            "model.vocab_ids).")
    visual = int((ids == model_cfg.img_context_token_id).sum())
    if max_vis and visual > max_vis:
      raise EvalPromptError(f"Evaluation prompt ({name}) has {visual} visual tokens, more than "
                            f"model.max_visual_tokens={max_vis}; raise the cap or lower the "
                            "images' max_pixels.")
