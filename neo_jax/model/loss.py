"""Weighted next-token loss with a chunked LM head (docs/design.md §3.5).

Each supervised prediction (position ``i`` predicting ``labels[i + 1]``) is
weighted by ``w(n)`` of its packed sample, ``n`` = the sample's number of
supervised predictions: ``token`` 1, ``sample`` 1/n, ``square`` 1/sqrt(n) (the
release's default). ``loss = sum(w * ce) / sum(w)``.

Only supervised positions need logits: with ``max_supervised_tokens = M > 0``
their hidden states are gathered (a static ``M`` per sequence) before the LM
head. The head and the cross entropy run over vocabulary chunks with an online
log-sum-exp and a hand-written backward (``model/chunked_ce.py``), so neither the
forward nor the backward holds ``[tokens, vocab]`` float32 logits: at most
``[tokens, chunk]``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from neo_jax.model import compact_vocab, positions as pos_lib
from neo_jax.model.chunked_ce import chunked_cross_entropy
from neo_jax.core.tokens import IGNORE_INDEX

Array = jax.Array


class Targets(NamedTuple):
  """Supervised predictions of a batch.

  Fields (N = B * S, or B * M after gathering):
    hidden_index: ``[B, N'] int32`` positions whose hidden state predicts.
    target: ``[B, N'] int32`` token to predict (0 where unused).
    weight: ``[B, N'] float32`` w(n) of the prediction (0 where unused).
    dropped: ``[] int32`` supervised predictions that did not fit in M.
  """
  hidden_index: Array
  target: Array
  weight: Array
  dropped: Array


def sample_weights(n: Array, mode: str) -> Array:
  """w(n) of docs/design.md §3.5 as float32; ``n`` clipped to >= 1.

  Raises:
    ValueError: unknown ``mode``.
  """
  n = jnp.maximum(n, 1).astype(jnp.float32)
  if mode == "token":
    return jnp.ones_like(n)
  if mode == "sample":
    return 1.0 / n
  if mode == "square":
    return jax.lax.rsqrt(n)
  raise ValueError(f"Unknown loss weighting {mode!r}; use token, sample or square.")


NORMALIZATIONS = ("global", "per_sequence")


def make_targets(labels: Array, segment_ids: Array, *, mode: str,
                 max_supervised_tokens: int = 0, normalization: str = "global") -> Targets:
  """Shifts labels, weights each prediction and optionally gathers them.

  Args:
    labels: ``[B, S] int32`` aligned labels (``IGNORE_INDEX`` = not supervised).
    segment_ids: ``[B, S] int32`` packed-sample ids, 0 = padding.
    mode: "token" | "sample" | "square".
    max_supervised_tokens: M > 0 gathers the first M supervised predictions of
      each sequence (static shape); 0 keeps all S positions.
    normalization: "global" keeps ``w(n)``; "per_sequence" divides each row's
      weights by their row sum (clamped at 1e-5, as the release's
      ``loss_function`` in ``modeling_neo_qwen3.py``), so ``sum(w * ce)`` of a row
      is that row's own normalised loss.

  Returns:
    ``Targets``; ``dropped`` counts predictions beyond M (the trainer treats a
    non-zero count as an error: the packer must respect M).

  Raises:
    ValueError: unknown ``mode`` or ``normalization``.
  """
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"Unknown loss normalization {normalization!r}; use one of {NORMALIZATIONS}.")
  b, s = labels.shape
  nxt = jnp.pad(labels[:, 1:], ((0, 0), (0, 1)), constant_values=IGNORE_INDEX)
  nxt_seg = jnp.pad(segment_ids[:, 1:], ((0, 0), (0, 1)))
  sup = (nxt != IGNORE_INDEX) & (nxt_seg == segment_ids) & (segment_ids > 0)
  n = pos_lib.segment_total(sup.astype(jnp.int32), segment_ids)
  weight = jnp.where(sup, sample_weights(n, mode), 0.0)
  target = jnp.where(sup, nxt, 0)
  index = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
  per_row = lambda w: (w / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), 1e-5)
                       if normalization == "per_sequence" else w)
  if not max_supervised_tokens:
    return Targets(index, target, per_row(weight), jnp.zeros((), jnp.int32))
  m = max_supervised_tokens
  # Stable order: supervised positions first, in sequence order.
  order, keep, count = pos_lib.first_true_positions(sup, m)
  gather = lambda a: jnp.take_along_axis(a, order, axis=1)
  return Targets(order, jnp.where(keep, gather(target), 0),
                 per_row(jnp.where(keep, gather(weight), 0.0)),
                 jnp.sum(jnp.maximum(count - m, 0)).astype(jnp.int32))


class LossOutput(NamedTuple):
  """Sums that combine across micro-batches and devices.

  ``weighted_ce``: sum of w * ce; ``weight``: sum of w; ``tokens``: supervised
  predictions counted; ``dropped``: predictions that did not fit in M.
  ``loss = weighted_ce / weight``.
  """
  weighted_ce: Array
  weight: Array
  tokens: Array
  dropped: Array


def lm_loss(hidden: Array, head: Array, labels: Array, segment_ids: Array, *,
            mode: str, chunk: int, max_supervised_tokens: int = 0,
            normalization: str = "global", head_layout: str = "vd",
            vocab_ids: tuple = ()) -> LossOutput:
  """The NEO training loss from final hidden states.

  Args:
    hidden: ``[B, S, D]`` final-normed hidden states.
    head: ``[V, D]`` LM head (``neo.head_weights``), or ``[D, V]`` with
      ``head_layout="dv"`` (``chunked_cross_entropy``).
    labels, segment_ids: ``[B, S] int32`` (see ``core/batch.py``).
    mode: loss weighting; chunk: vocabulary chunk; max_supervised_tokens: M;
    normalization: "global" | "per_sequence" (``make_targets``).
    vocab_ids: the model's compact vocabulary (``model.vocab_ids``; targets are token
      ids, mapped to head rows by ``compact_vocab.rows_of``), ``()`` = row is id.

  Returns:
    ``LossOutput`` of float32 / int32 scalars.
  """
  t = make_targets(labels, segment_ids, mode=mode, max_supervised_tokens=max_supervised_tokens,
                   normalization=normalization)
  h = jnp.take_along_axis(hidden, t.hidden_index[..., None], axis=1)  # [B, N', D]
  b, n, d = h.shape
  target = compact_vocab.rows_of(t.target, vocab_ids)
  ce = chunked_cross_entropy(h.reshape(b * n, d), head, target.reshape(-1), chunk=chunk,
                             head_layout=head_layout)
  w = t.weight.reshape(-1)
  return LossOutput(jnp.sum(w * ce), jnp.sum(w), jnp.sum(w > 0).astype(jnp.int32), t.dropped)
