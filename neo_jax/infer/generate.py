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
from neo_jax.core import geometry
from neo_jax.infer import sampling
from neo_jax.model.neo import NEO


def prompts_to_batch(prompts: Sequence[dict], length: int, img_context_id: int,
                     patch_size: int = geometry.PATCH_SIZE) -> tuple[dict, np.ndarray]:
  """Per-sample prompts -> a right-padded batch and the prompt lengths.

  Each prompt is one row (``core.batch.assemble_batch``); the whole row is
  segment 1, so the tokens appended after the prompt see it.

  Args:
    prompts: dicts with ``input_ids [n] int``, ``token_hw [n, 2] int`` and
      ``pixel_values [num_ctx, 4, 3 P P] uint8`` (the visual tokens in order).
    length: row length L (>= longest prompt + tokens to generate).
    img_context_id: the ``<IMG_CONTEXT>`` id.
    patch_size: [pixels] patch side.

  Returns:
    (batch dict with ``input_ids``, ``segment_ids``, ``token_hw``,
    ``pixel_values``; ``lengths [E] int32``).

  Raises:
    ValueError: a prompt longer than ``length``, or a pixel count that does not
      match its ``<IMG_CONTEXT>`` tokens.
  """
  for i, p in enumerate(prompts):
    if len(p["input_ids"]) > length:
      raise ValueError(f"Prompt {i} has {len(p['input_ids'])} tokens, longer than the "
                       f"generation row {length}.")
  full = batch_lib.assemble_batch([[dict(p, record_id=f"prompt {i}", labels=None)]
                                   for i, p in enumerate(prompts)], length, pad_id=0,
                                  img_context_id=img_context_id, patch_size=patch_size)
  lengths = (full["segment_ids"] > 0).sum(axis=1).astype(np.int32)
  batch = {"input_ids": full["input_ids"], "segment_ids": np.ones_like(full["segment_ids"]),
           "token_hw": full["token_hw"], "pixel_values": full["pixel_values"]}
  return batch, lengths


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
    prompts: see ``prompts_to_batch``.
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
  batch, lengths = prompts_to_batch(prompts, length, model.config.img_context_token_id,
                                    model.config.patch_size)
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
