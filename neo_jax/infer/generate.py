"""Uncached greedy generation: the oracle of the KV-cache decoder (``decode.py``).

Each prompt occupies one row of a ``[E, L]`` batch; one jitted step runs the
model on the whole row and reads the hidden state at the row's last filled
position, so every generated token gets ``t = previous max t + 1`` and
h = w = 0, as the release's inference code (docs/design.md §1.7). Positions after
the filled ones never influence earlier ones (causal mask), so the rows need
no padding mask.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from neo_jax.core import batch as batch_lib
from neo_jax.infer import sampling
from neo_jax.model.neo import NEO


def make_greedy_step(model: NEO, banned_ids: Sequence[int] = ()):
  """Jitted ``(params, batch, lengths) -> (next token [E] int32, logits [E, V] float32)``
  (argmax over the logits with ``banned_ids`` excluded; the logits are returned raw)."""

  @jax.jit
  def step(params, batch, lengths):
    hidden = model.apply({"params": params}, batch["input_ids"], batch["segment_ids"],
                         batch["token_hw"], batch["pixel_values"], return_hidden=True)
    last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]
    logits = model.apply({"params": params}, last, method=NEO.logits)
    return jnp.argmax(sampling.ban(logits, banned_ids), axis=-1).astype(jnp.int32), logits

  return step


def greedy_generate(model: NEO, params: Any, prompts: Sequence[dict], *, max_new_tokens: int,
                    stop_ids: Sequence[int] = (), step_fn=None, bucket: int = 64,
                    banned_ids: Sequence[int] = (), return_logits: bool = False):
  """Greedy continuation of each prompt, re-running each whole row per token (no cache).

  The oracle of ``decode.Generator`` (and a baseline of ``bench/decode.py``).

  Args:
    model / params: the model and its (unboxed) parameters.
    prompts: see ``core.batch.prompt_batch``.
    max_new_tokens: tokens to generate at most.
    stop_ids: generation of a row stops after one of these (it is not returned).
    step_fn: a cached ``make_greedy_step(model, banned_ids)`` (compiled once per shape).
    bucket: row length rounded up to a multiple of this (fewer recompiles).
    banned_ids: ids never chosen.
    return_logits: also return the logits of every step, ``[E, max_new_tokens, V]``.

  Returns:
    Generated token ids per prompt (and the logits when asked).
  """
  if not prompts:
    return ([], None) if return_logits else []
  step_fn = step_fn or make_greedy_step(model, banned_ids)
  longest = max(len(p["input_ids"]) for p in prompts)
  length = -(-(longest + max_new_tokens) // bucket) * bucket
  batch, lengths = batch_lib.prompt_batch(
      prompts, length, img_context_id=model.config.img_context_token_id,
      patch_size=model.config.patch_size, pad_segment=1)
  out = [[] for _ in prompts]
  done = np.zeros(len(prompts), bool)
  stop = set(int(s) for s in stop_ids)
  all_logits = []
  for _ in range(max_new_tokens):
    nxt, logits = step_fn(params, batch, lengths)
    nxt = np.asarray(nxt)
    if return_logits:
      all_logits.append(np.asarray(logits))
    for i, t in enumerate(nxt):
      if done[i]:
        continue
      if int(t) in stop:
        done[i] = True
        continue
      out[i].append(int(t))
      batch["input_ids"][i, lengths[i]] = t
      lengths[i] += 1
    if done.all():
      break
  return (out, np.stack(all_logits, axis=1)) if return_logits else out
