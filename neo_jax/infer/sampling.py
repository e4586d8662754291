"""Choosing the next token from logits: repetition penalty, greedy, temperature, top-k, top-p.

Pure functions with explicit PRNG keys; the parameters are static (Python
numbers), so each setting compiles once. Banned ids (the image tokens
``<img>``, ``<IMG_CONTEXT>``, ``</img>``, which a text decoder must never emit)
get ``-inf`` before any choice. The order is Hugging Face ``generate``'s: the
repetition penalty first (a logits processor), then temperature, top-k, top-p
(the sampling warpers), then argmax or a draw.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How the next token is chosen.

  temperature: 0 = greedy (argmax); > 0 divides the logits.
  top_k: keep the k most likely tokens (0 = all).
  top_p: keep the smallest set of tokens whose probability reaches p (1 = all);
    the most likely token is always kept.
  repetition_penalty: > 0; 1 = none. The logit of every token already generated
    is divided by it when positive, multiplied when negative (CTRL, Keskar et al.
    2019; ``transformers.RepetitionPenaltyLogitsProcessor``), greedy or sampled.
    "Generated" is the answer so far, not the prompt: the release's
    ``NEOChatModel.generate`` passes the prompt as ``inputs_embeds`` only, so
    Hugging Face's ``input_ids`` that the penalty reads start empty.
  banned_ids: ids that are never chosen.
  """
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  repetition_penalty: float = 1.0
  banned_ids: tuple[int, ...] = ()

  def __post_init__(self):
    if (self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1
        or not self.repetition_penalty > 0):
      raise ValueError(f"Bad sampling config {self}: temperature >= 0, top_k >= 0, "
                       "0 < top_p <= 1, repetition_penalty > 0.")


def ban(logits: jax.Array, banned_ids: Sequence[int]) -> jax.Array:
  """``logits [..., V]`` with the banned ids set to -inf."""
  if not banned_ids:
    return jnp.asarray(logits)
  return jnp.asarray(logits).at[..., jnp.asarray(banned_ids, jnp.int32)].set(-jnp.inf)


def penalize(logits: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
  """The repetition penalty: ``logits [B, V]`` where ``seen [B, V] bool`` is set become
  ``logit * penalty`` if negative, else ``logit / penalty`` (each token once, however
  often it was generated: ``transformers.RepetitionPenaltyLogitsProcessor``)."""
  logits = jnp.asarray(logits)
  hit = jnp.where(logits < 0, logits * penalty, logits / penalty)
  return jnp.where(seen, hit, logits)


def greedy(logits: jax.Array) -> jax.Array:
  """``jnp.argmax(logits, -1)`` as two plain reductions: ``[B, V] -> [B] int32``.

  The first position of the row's maximum (the first NaN when the row has one, as
  ``jnp.argmax``; index 0 for a row of ``-inf``). XLA:CPU runs ``argmax``'s
  variadic (value, index) reduction element by element; a max, then a min over the
  positions holding it, vectorize (0.37 against 0.90 ms over a 151,936-token row,
  BUILD_NOTES.md §0l).
  """
  v = logits.shape[-1]
  top = jnp.max(logits, axis=-1, keepdims=True)
  nan = jnp.isnan(logits)          # (XLA:CPU's max may skip a NaN: test it apart)
  hit = jnp.where(jnp.any(nan, axis=-1, keepdims=True), nan, logits == top)
  return jnp.min(jnp.where(hit, jnp.arange(v, dtype=jnp.int32), v), axis=-1)


def choose(logits: jax.Array, key: jax.Array, cfg: SamplingConfig,
           seen: jax.Array | None = None) -> jax.Array:
  """The next token of each row.

  Args:
    logits: ``[B, V] float32``.
    key: a PRNG key (unused when greedy).
    cfg: the sampling config.
    seen: ``[B, V] bool``, the tokens each row generated so far (for
      ``cfg.repetition_penalty``; None = none yet).

  Returns:
    ``[B] int32``.
  """
  logits = ban(jnp.asarray(logits, jnp.float32), cfg.banned_ids)
  if cfg.repetition_penalty != 1 and seen is not None:
    logits = penalize(logits, seen, cfg.repetition_penalty)
  if cfg.temperature == 0:
    return greedy(logits)
  logits = logits / cfg.temperature
  if cfg.top_k:
    kth = jax.lax.top_k(logits, cfg.top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if cfg.top_p < 1:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs        # mass of the more likely tokens
    drop_sorted = before >= cfg.top_p
    drop = jnp.zeros_like(drop_sorted).at[
        jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
    logits = jnp.where(drop, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
