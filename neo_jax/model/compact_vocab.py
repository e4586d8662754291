"""A compact vocabulary: the model's embedding and LM-head rows hold a listed set of ids.

``model.vocab_ids = (i_0, ..., i_{K-1})`` (strictly increasing token ids, ``K =
model.vocab_size``) makes row ``r`` of ``embed_tokens`` / ``lm_head`` the row of token id
``i_r``. Everything outside the model keeps the tokenizer's ids: the model maps input ids
to rows (``rows_of``) before the embedding lookup, the loss maps its targets the same way,
and ``NEO.logits`` returns logits over the whole id space (``id_space``) with ``-inf``
(probability 0) at every id that has no row (``expand_logits``), so decoding, banning
ids, stop ids and likelihood scoring work unchanged.

The use is a study whose tasks write a few dozen distinct tokens (the Table 3 ablation,
BUILD_NOTES §0e): a head over the 151,936-row Qwen3 vocabulary would be most of a small
model's step. Empty ``vocab_ids`` (the default) is the identity: row = id.

The rows are sharded like the full vocabulary's (the ``vocab`` logical axis, on the
mesh's ``tensor`` axis): with ``tensor`` > 1 their count must be a multiple of it (JAX
refuses an uneven split with ``IndivisibleError``); list a few more ids to round it up.

An id without a row would silently embed as a neighbouring row; the host-side checks
(``unknown_ids``, used by ``train/health.py`` on every training batch and evaluation
prompt) refuse such input before it reaches the model.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from neo_jax.core.tokens import IGNORE_INDEX

Array = jax.Array


def id_space(vocab_size: int, vocab_ids: Sequence[int]) -> int:
  """Width of the logits ``NEO.logits`` returns: ``max(vocab_ids) + 1``, or ``vocab_size``
  when ``vocab_ids`` is empty."""
  return int(vocab_ids[-1]) + 1 if len(vocab_ids) else int(vocab_size)


def rows_of(ids: Array, vocab_ids: Sequence[int]) -> Array:
  """Token ids -> rows of the compact table (identity when ``vocab_ids`` is empty).

  Args:
    ids: integer array of any shape; every id must be one of ``vocab_ids`` (checked on
      the host by ``unknown_ids``: an id without a row maps to a neighbouring row).
    vocab_ids: strictly increasing ids, one per row.

  Returns:
    ``int32`` rows, the shape of ``ids``.
  """
  if not len(vocab_ids):
    return ids
  table = jnp.asarray(np.asarray(vocab_ids, np.int32))
  rows = jnp.searchsorted(table, ids.astype(jnp.int32))
  return jnp.minimum(rows, len(vocab_ids) - 1).astype(jnp.int32)


def expand_logits(logits: Array, vocab_ids: Sequence[int]) -> Array:
  """``[..., K]`` row logits -> ``[..., max(vocab_ids) + 1]`` id logits, ``-inf`` at every
  id without a row (identity when ``vocab_ids`` is empty). Same dtype."""
  if not len(vocab_ids):
    return logits
  full = jnp.full(logits.shape[:-1] + (id_space(0, vocab_ids),), -jnp.inf, logits.dtype)
  return full.at[..., np.asarray(vocab_ids, np.int32)].set(logits)


def unknown_ids(ids: np.ndarray, vocab_size: int, vocab_ids: Sequence[int]) -> np.ndarray:
  """The sorted distinct ids in ``ids`` that have no row (``IGNORE_INDEX`` is skipped):
  not in ``vocab_ids``, or outside ``[0, vocab_size)`` when ``vocab_ids`` is empty.

  Args:
    ids: integer array of any shape (input ids or labels), host memory.
    vocab_size: rows of the table; vocab_ids: the compact vocabulary or ``()``.

  Returns:
    ``int64 [n]`` (empty when every id has a row).
  """
  a = np.asarray(ids, np.int64).ravel()
  a = a[a != IGNORE_INDEX]
  if not len(vocab_ids):
    if not a.size or (a.min() >= 0 and a.max() < vocab_size):   # the common case, O(n)
      return np.zeros((0,), np.int64)
    u = np.unique(a)
    return u[(u < 0) | (u >= vocab_size)]
  u = np.unique(a)
  return u[~np.isin(u, np.asarray(vocab_ids, np.int64))]
