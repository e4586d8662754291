"""Log-likelihood of continuations (lmms-eval's ``loglikelihood`` requests).

For each prompt (a processed ``prompt_only`` sample: the chat up to the assistant header)
and continuation token ids, one forward pass over ``prompt + continuation`` (the
uncached model, rows right-padded, ``core.batch.prompt_batch``) gives the
hidden state before each continuation token; only those positions go through the
output head. Returned per row: the summed log-probability of the continuation
[nats] and whether each of its tokens is the argmax (lmms-eval's ``is_greedy``).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from neo_jax.core import batch as batch_lib
from neo_jax.model.neo import NEO


def _score(model: NEO, params, batch, starts, targets, mask):
  """``(sum log p [B], all greedy [B])`` of ``targets [B, C]`` at positions
  ``starts + j - 1`` (``mask [B, C]`` marks real tokens)."""
  hidden = model.apply({"params": params}, batch["input_ids"], batch["segment_ids"],
                       batch["token_hw"], batch["pixel_values"], return_hidden=True)
  pos = starts[:, None] + jnp.arange(targets.shape[1])[None] - 1
  h = jnp.take_along_axis(hidden, jnp.clip(pos, 0, hidden.shape[1] - 1)[..., None], axis=1)
  logits = model.apply({"params": params}, h, method=NEO.logits).astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  tok = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  greedy = jnp.argmax(logits, axis=-1) == targets
  return jnp.sum(jnp.where(mask, tok, 0.0), axis=1), jnp.all(greedy | ~mask, axis=1)


class LogLikelihood:
  """``LogLikelihood(model_cfg)(params, prompts, continuations)`` (module docstring);
  compiled once per padded shape."""

  def __init__(self, model_cfg, bucket: int | None = None):
    self.model = NEO(model_cfg)
    self.bucket = bucket
    self._fn = jax.jit(functools.partial(_score, self.model))

  def __call__(self, params: Any, prompts: Sequence[dict],
               continuations: Sequence[Sequence[int]]) -> list[tuple[float, bool]]:
    """``[(log p(continuation | prompt) [nats], is greedy)]`` per row.

    Args:
      params: the model's parameters.
      prompts: processed samples (``input_ids``, ``token_hw``, ``pixel_values``).
      continuations: token ids of each continuation (at least one each).
    Raises:
      ValueError: an empty continuation, or prompts and continuations of different counts.
    """
    if len(prompts) != len(continuations):
      raise ValueError(f"{len(prompts)} prompts for {len(continuations)} continuations")
    if any(len(c) == 0 for c in continuations):
      raise ValueError("an empty continuation has no likelihood to score")
    rows = []
    for p, c in zip(prompts, continuations):
      c = np.asarray(c, np.int32)
      rows.append(dict(p, input_ids=np.concatenate([p["input_ids"], c]),
                       token_hw=np.concatenate([p["token_hw"], np.zeros((len(c), 2), np.int32)])))
    longest = max(len(r["input_ids"]) for r in rows)
    cfg = self.model.config
    batch, _ = batch_lib.prompt_batch(rows, batch_lib.padded_length(longest, self.bucket),
                                      img_context_id=cfg.img_context_token_id,
                                      patch_size=cfg.patch_size, pad_segment=1)
    width = -(-max(len(c) for c in continuations) // 8) * 8
    targets = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, c in enumerate(continuations):
      targets[i, :len(c)], mask[i, :len(c)] = c, True
    starts = np.asarray([len(p["input_ids"]) for p in prompts], np.int32)
    total, greedy = self._fn(params, batch, starts, targets, mask)
    return [(float(t), bool(g)) for t, g in zip(np.asarray(total), np.asarray(greedy))]
