"""The LM head + cross entropy over vocabulary chunks, with a hand-written backward.

docs/design.md §3.6 performance note: neither pass holds ``[tokens, vocab]`` logits, at most
``[tokens, chunk]``. The forward is a scan over chunks with an online log-sum-exp; it
returns the cross entropy and keeps the row log-sum-exp ``lse``. The backward
recomputes each chunk's logits once and forms the gradient of the logits directly,

    d logits = g * (softmax(logits) - onehot(target)),   softmax = exp(logits - lse)

(``g`` the incoming per-row cotangent), then ``d hidden += d logits @ W_c^T`` and
``d W_c = hidden^T @ d logits``, written in place into the head's gradient. Autodiff
of the checkpointed online-softmax scan differentiated the running max and rescaling
too (extra passes over every ``[tokens, chunk]`` block, an arg-max mask among them)
and accumulated the head's gradient by adding a full ``[V, D]`` array per chunk; on
issue 16's 151,936-token vocabulary the head is three quarters of the step's FLOPs
(BUILD_NOTES §0g, issue 28). The forward values are those of the former code (same
operations in the same order); the gradients equal autodiff's to float rounding
(``tests/test_model_chunked_ce.py``, float64).

The last chunk starts at ``V - chunk`` and masks the columns an earlier chunk covered
(no padded copy of the head). The backward walks the chunks in reverse, so the earlier
chunk's gradient columns overwrite the last chunk's masked (zero) ones.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class _Spec(NamedTuple):
  """Static layout: ``chunk`` rows per step, ``layout`` "vd" | "dv", ``vocab`` V."""
  chunk: int
  layout: str
  vocab: int


def chunked_cross_entropy(hidden: Array, head: Array, target: Array, *, chunk: int,
                          head_layout: str = "vd") -> Array:
  """Per-row cross entropy of ``hidden @ head.T`` without full logits (differentiable).

  Args:
    hidden: ``[N, D]`` (compute dtype).
    head: ``[V, D]`` LM head rows (``head_layout="vd"``: the embedding table of a
      tied head) or ``[D, V]`` (``"dv"``: an untied ``lm_head/kernel`` as stored,
      read in place: no transposed copy of a ``V x D`` matrix, nor of its
      gradient). Any float dtype; cast to ``hidden.dtype``.
    target: ``[N] int32`` in [0, V).
    chunk: vocabulary rows per step (clipped to V).
    head_layout: "vd" | "dv" (above).

  Returns:
    ``[N]`` cross entropy ``logsumexp(logits) - logits[target]``, logits accumulated
    in float32 (float64 for float64 inputs, the tests' oracle precision).

  Raises:
    ValueError: unknown ``head_layout`` or a non-positive ``chunk``.
  """
  if head_layout not in ("vd", "dv"):
    raise ValueError(f"head_layout={head_layout!r} is not 'vd' or 'dv'.")
  if chunk <= 0:
    raise ValueError(f"chunk={chunk} must be positive.")
  vocab = head.shape[0 if head_layout == "vd" else 1]
  spec = _Spec(min(chunk, vocab), head_layout, vocab)
  return _ce(spec, hidden, head.astype(hidden.dtype), target)


def _acc(hidden) -> jnp.dtype:
  """Accumulation dtype: float32, or float64 for float64 inputs."""
  return jnp.promote_types(hidden.dtype, jnp.float32)


def _chunk_logits(spec: _Spec, hidden, head, c):
  """Chunk ``c``: (its start column, head slice, logits (``_acc``) with the columns an
  earlier chunk covered masked to -inf, column ids, mask of the chunk's own columns)."""
  begin = c * spec.chunk
  start = jnp.minimum(begin, spec.vocab - spec.chunk)
  axis = 0 if spec.layout == "vd" else 1
  w = jax.lax.dynamic_slice_in_dim(head, start, spec.chunk, axis=axis)
  logits = jnp.einsum("nd,vd->nv" if spec.layout == "vd" else "nd,dv->nv", hidden, w,
                      preferred_element_type=_acc(hidden))
  col = start + jnp.arange(spec.chunk)
  own = col[None, :] >= begin
  return start, w, jnp.where(own, logits, -jnp.inf), col, own


def _num_chunks(spec: _Spec) -> int:
  return -(-spec.vocab // spec.chunk)


def _forward(spec: _Spec, hidden, head, target):
  """``(ce [N], lse [N])`` in ``_acc``: the online log-sum-exp over the chunks."""
  def step(carry, c):
    m, s, tgt = carry
    _, _, logits, col, own = _chunk_logits(spec, hidden, head, c)
    m_new = jnp.maximum(m, jnp.max(logits, axis=1))
    s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(logits - m_new[:, None]), axis=1)
    hit = (col[None, :] == target[:, None]) & own
    tgt = tgt + jnp.sum(jnp.where(hit, logits, 0.0), axis=1)
    return (m_new, s, tgt), None

  n, acc = hidden.shape[0], _acc(hidden)
  init = (jnp.full((n,), -jnp.inf, acc), jnp.zeros((n,), acc), jnp.zeros((n,), acc))
  (m, s, tgt), _ = jax.lax.scan(step, init, jnp.arange(_num_chunks(spec)))
  lse = m + jnp.log(s)
  return lse - tgt, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ce(spec: _Spec, hidden, head, target):
  return _forward(spec, hidden, head, target)[0]


def _ce_fwd(spec, hidden, head, target):
  ce, lse = _forward(spec, hidden, head, target)
  return ce, (hidden, head, target, lse)


def _ce_bwd(spec, res, g):
  hidden, head, target, lse = res
  hidden_t = hidden.T                                    # [D, N], once
  axis = 0 if spec.layout == "vd" else 1
  acc = _acc(hidden)
  g = g.astype(acc)

  def step(carry, c):
    dh, dw = carry
    start, w, logits, col, own = _chunk_logits(spec, hidden, head, c)
    hit = (col[None, :] == target[:, None]) & own
    p = jnp.exp(logits - lse[:, None])                   # 0 on masked columns
    d = (g[:, None] * (p - hit.astype(acc))).astype(hidden.dtype)
    # Products in the compute dtype, as autodiff's transposes of the forward's einsum
    # (XLA:CPU has no bfloat16 x bfloat16 -> float32 dot); dh accumulates in ``acc``.
    if spec.layout == "vd":
      dh = dh + jnp.einsum("nv,vd->nd", d, w).astype(acc)
      dw_c = jnp.matmul(hidden_t, d).T                                # [chunk, D]
    else:
      dh = dh + jnp.einsum("nv,dv->nd", d, w).astype(acc)
      dw_c = jnp.matmul(hidden_t, d)                                  # [D, chunk]
    dw = jax.lax.dynamic_update_slice_in_dim(dw, dw_c.astype(dw.dtype), start, axis=axis)
    return (dh, dw), None

  init = (jnp.zeros(hidden.shape, acc), jnp.zeros(head.shape, head.dtype))
  (dh, dw), _ = jax.lax.scan(step, init, jnp.arange(_num_chunks(spec)), reverse=True)
  return dh.astype(hidden.dtype), dw, None


_ce.defvjp(_ce_fwd, _ce_bwd)
