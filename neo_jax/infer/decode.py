"""Cached decoding: one prefill over the prompts, then a jitted loop of one-token steps.

``Generator(model_cfg)`` compiles two programs per shape bucket (and, on CPU, the split
of the layer weights and cache between them, ``unroll_layers``):

* prefill: the prompts, right-padded to a bucket of ``S`` positions (segment 1 on the
  prompt, 0 on padding), through the model with the mixed mask (the Pallas kernel
  where ``attention_impl`` selects it), filling cache positions ``[0, S)``; the
  first token comes from each row's last prompt position. The patch embedder runs on
  the prompts' ``<IMG_CONTEXT>`` positions only, a gather sized by the prompts
  (``Generator.visual_slots``), not by the config's training cap.
* decode: a ``lax.while_loop`` over at most ``max_new_tokens`` steps; each step
  feeds every row's last token at its own cache index (the row's length so far)
  with ``t = previous max t + 1`` and ``h = w = 0`` (the release's inference rule,
  docs/design.md §1.7, independent of the cache length), chooses the next token
  (``sampling.choose``: greedy or temperature / top-k / top-p with an explicit key;
  image-token ids banned; with a repetition penalty, each row's generated tokens
  are carried as a ``[B, V]`` mask) and stops when every row has produced a stop id.

Rows of different prompt lengths share one cache of ``L = S + max_new_tokens``
positions. On CPU (``unroll_layers``) the loop runs the layers unrolled, on the
layer weights and cache split per layer after the prefill. Under a mesh (``mesh`` and
``rules``) the parameters keep the training layout and the cache follows the
activations' logical axes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from neo_jax.core import batch as batch_lib
from neo_jax.infer import kv_cache, sampling
from neo_jax.model import layers
from neo_jax.model import positions as pos_lib
from neo_jax.model import shapes
from neo_jax.model.model_config import ModelConfig
from neo_jax.model.neo import NEO

NO_TOKEN = -1
# The largest per-layer copy of the decoder weights ``Generator`` makes by default [B].
UNROLL_MAX_BYTES = 2 ** 30


def decoder_bytes(cfg: ModelConfig) -> int:
  """Bytes of the decoder stacks' parameters (``param_dtype``): what ``unroll_layers``
  copies."""
  itemsize = jnp.dtype(cfg.param_dtype).itemsize
  return sum(math.prod(shape) * itemsize for path, shape in shapes.param_shapes(cfg).items()
             if path[0] in cfg.stack_layers)


class Generator:
  """Cached generation for one model config.

  Args:
    model_cfg: the model config (``remat_policy`` is ignored: nothing is
      differentiated).

    mesh, rules: optional device mesh and logical-axis rules (the training
      ``Setup``'s); the programs are traced under them.
    bucket: prompt lengths are rounded up to a multiple of this; ``None`` (default):
      geometric buckets, at most 1/8 padding (``core.batch.padded_length``). A
      bucket is one compiled prefill program per prompt shape.
    unroll_layers: run the decode loop's layers unrolled, on one parameter (and
      cache) buffer per layer (``NEO(unrolled_layers=True)``): after the prefill
      (scanned, which XLA:CPU runs faster) the stacked layer weights and the filled
      cache are split per layer (one copy of the decoder weights, held until
      ``generate`` returns), so every step's dots read them in place, where the
      scanned layers make XLA:CPU copy each layer's weights out of the stack at
      every step (BUILD_NOTES.md §0l). ``None`` (default): on when the programs run
      on CPU and that copy is at most ``UNROLL_MAX_BYTES`` (larger models keep one
      copy of their weights; pass ``True`` to trade the memory for the speed).
  """

  def __init__(self, model_cfg: ModelConfig | ml_collections.ConfigDict, *, mesh=None,
               rules=None, bucket: int | None = None, unroll_layers: bool | None = None):
    cfg = ModelConfig.coerce(model_cfg).replace(remat_policy="none")
    self.cfg = cfg
    if unroll_layers is None:
      platform = (mesh.devices.flat[0].platform if mesh is not None
                  else jax.default_backend())
      unroll_layers = platform == "cpu" and decoder_bytes(cfg) <= UNROLL_MAX_BYTES
    self.unrolled = bool(unroll_layers)
    self.decode_model = NEO(cfg, cache_mode="decode", unrolled_layers=self.unrolled)
    split = functools.partial(layers.unrolled_layer_params, stack_layers=cfg.stack_layers)
    # (stacked layer params, stacked cache) -> the same per layer (the stacked cache is
    # dropped by the caller: donating it would not help, no output has its shape).
    self._split = jax.jit(lambda p, c: (split(p), split(c)))
    self.mesh, self.rules, self.bucket = mesh, rules, bucket
    self.image_ids = (cfg.img_start_token_id, cfg.img_context_token_id, cfg.img_end_token_id)
    self._programs = {}
    self._executables = {}
    # The last ``generate``: compile_s, prefill_s (the time to the first token, without
    # compiling), decode_s (the remaining tokens, the per-layer split included, without
    # compiling), new_tokens (all rows) [s, tokens].
    self.timing: dict[str, float] = {}

  def _context(self):
    stack = contextlib.ExitStack()
    if self.mesh is not None:
      stack.enter_context(nn.logical_axis_rules(self.rules or ()))
      stack.enter_context(jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh))
    return stack

  def prompts_batch(self, prompts: Sequence[dict]) -> tuple[dict, np.ndarray]:
    """Right-padded prefill batch (segment 1 on each prompt, padding 0) and prompt
    lengths ``[B]`` (``core.batch.prompt_batch``; rows padded to
    ``core.batch.padded_length(longest, self.bucket)``)."""
    longest = max(len(p["input_ids"]) for p in prompts)
    return batch_lib.prompt_batch(prompts, batch_lib.padded_length(longest, self.bucket),
                                  img_context_id=self.cfg.img_context_token_id,
                                  patch_size=self.cfg.patch_size)

  def visual_slots(self, batch: dict) -> int:
    """The prefill's patch-embedder gather size for a prompt batch [positions per row].

    The prefill embeds only each row's ``<IMG_CONTEXT>`` positions
    (``model.visual_gather``), sized from the prompts themselves: the largest count of
    a row, rounded up like prompt lengths (``core.batch.padded_length``, so similar
    prompts share a program) and at most the row length. The model config's
    ``max_visual_tokens`` (a training packer's cap) plays no part: a prompt holding
    more visual tokens than it still gets every one embedded, never NaN rows.

    Args:
      batch: ``prompts_batch``'s batch (``input_ids [B, S] int32``).

    Returns:
      ``M`` with ``1 <= M <= S``.
    """
    ids = np.asarray(batch["input_ids"])
    most = int((ids == self.cfg.img_context_token_id).sum(axis=1).max())
    return min(ids.shape[1], batch_lib.padded_length(max(most, 1), self.bucket))

  def _prefill_model(self, max_visual: int) -> NEO:
    """The prefill's model: this config, the patch embedder gathering ``max_visual``
    positions per row (``visual_slots``)."""
    return NEO(self.cfg.replace(max_visual_tokens=max_visual), cache_mode="prefill")

  def _program(self, max_new_tokens: int, stop_ids: tuple[int, ...],
               scfg: sampling.SamplingConfig, return_logits: bool, max_visual: int):
    """``(prefill, loop)`` jitted programs: the prefill returns the loop's carry (the
    filled cache and the first token), the loop (cache donated) the generated tokens."""
    key = (max_new_tokens, stop_ids, scfg, return_logits, max_visual)
    if key not in self._programs:
      scfg = dataclasses.replace(scfg, banned_ids=tuple(scfg.banned_ids) + self.image_ids)
      # Under a mesh the results come back replicated: every process (multi-host)
      # can read them.
      rep = (None if self.mesh is None else
             jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec()))
      out_shardings = None if rep is None else (rep, rep, None)
      kw = dict(max_new_tokens=max_new_tokens, stop_ids=stop_ids, scfg=scfg,
                return_logits=return_logits)
      self._programs[key] = (jax.jit(functools.partial(self._start, max_visual=max_visual,
                                                       **kw)),
                             jax.jit(functools.partial(self._loop, **kw), donate_argnums=(1,),
                                     out_shardings=out_shardings))
    return self._programs[key]

  def _compiled(self, key, jitted, *args):
    """``jitted`` compiled for ``args``' shapes (cached); the compile time is added to
    ``timing["compile_s"]``."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    shapes = (key, treedef, tuple((np.shape(x), str(getattr(x, "dtype", type(x))),
                                   getattr(x, "sharding", None)) for x in leaves))
    if shapes not in self._executables:
      t0 = time.perf_counter()
      self._executables[shapes] = jitted.lower(*args).compile()
      self.timing["compile_s"] += time.perf_counter() - t0
    return self._executables[shapes]

  def _prefill(self, params, batch, lengths, length, max_visual):
    """Fills the cache; returns (cache, logits of each row's last prompt position,
    each row's next t)."""
    cfg = self.cfg
    b = batch["input_ids"].shape[0]
    cache = kv_cache.init_cache(cfg, b, length)
    model = self._prefill_model(max_visual)
    hidden, mut = model.apply(
        {"params": params, "cache": cache}, batch["input_ids"], batch["segment_ids"],
        batch["token_hw"], batch["pixel_values"], return_hidden=True, mutable=["cache"])
    last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]
    logits = model.apply({"params": params}, last, method=NEO.logits)
    pos = pos_lib.rope_positions(
        cfg.rope_mode, batch["input_ids"], batch["segment_ids"],
        batch["token_hw"], img_start_id=cfg.img_start_token_id,
        img_context_id=cfg.img_context_token_id)
    # Native / 1d: the next t follows the largest t (h, w are in-image coordinates).
    # mRoPE: Qwen2-VL's rule, one past the largest of all three indices.
    t = jnp.max(pos, axis=-1) if cfg.rope_mode == "mrope" else pos[..., 0]
    next_t = jnp.max(jnp.where(batch["segment_ids"] > 0, t, -1), axis=1) + 1
    return mut["cache"], logits, next_t.astype(jnp.int32)

  def _start(self, params, batch, lengths, rng, *, max_new_tokens, stop_ids, scfg,
             return_logits, max_visual):
    """The prefill: the loop's initial carry (cache filled, first token chosen)."""
    del stop_ids
    b, s = batch["input_ids"].shape
    n = max_new_tokens
    with self._context():
      cache, logits0, next_t = self._prefill(params, batch, lengths, s + n, max_visual)
      rng, sub = jax.random.split(rng)
      all_logits = (jnp.zeros((b, n + 1, logits0.shape[-1]), jnp.float32).at[:, 0].set(logits0)
                    if return_logits else jnp.zeros((), jnp.float32))
      # The tokens each row generated (repetition penalty only): none before the first.
      seen = (jnp.zeros((b, logits0.shape[-1]), bool) if scfg.repetition_penalty != 1
              else jnp.zeros((), bool))
      return dict(cache=cache, i=jnp.zeros((), jnp.int32),
                  tok=sampling.choose(logits0, sub, scfg), t=next_t,
                  idx=lengths.astype(jnp.int32), rng=rng, done=jnp.zeros((b,), bool),
                  out=jnp.full((b, n), NO_TOKEN, jnp.int32), logits=all_logits, seen=seen)

  def _loop(self, params, cache, init, *, max_new_tokens, stop_ids, scfg, return_logits):
    """One-token steps from the prefill's carry until every row stopped or ``n`` tokens."""
    n = max_new_tokens
    init = dict(init, cache=cache)
    with self._context():
      stop = jnp.asarray(stop_ids or (NO_TOKEN,), jnp.int32)

      def cond(c):
        return (c["i"] < n) & ~jnp.all(c["done"])

      def body(c):
        # Token i is final: record it (unless the row stopped), then feed it.
        done = c["done"] | jnp.isin(c["tok"], stop)
        out = c["out"].at[:, c["i"]].set(jnp.where(done, NO_TOKEN, c["tok"]))
        logits, mut = self.decode_model.apply(
            {"params": params, "cache": c["cache"]}, c["tok"], c["t"], c["idx"],
            method=NEO.decode_step, mutable=["cache"])
        rng, sub = jax.random.split(c["rng"])
        all_logits = c["logits"]
        if return_logits:
          all_logits = jax.lax.dynamic_update_slice_in_dim(all_logits, logits[:, None],
                                                           c["i"] + 1, 1)
        seen = c["seen"]
        if scfg.repetition_penalty != 1:  # token i joins the history the penalty reads
          seen = seen.at[jnp.arange(seen.shape[0]), c["tok"]].set(True)
        return dict(cache=mut["cache"], i=c["i"] + 1,
                    tok=sampling.choose(logits, sub, scfg, seen if seen.ndim else None),
                    t=c["t"] + 1, idx=c["idx"] + 1, rng=rng, done=done, out=out,
                    logits=all_logits, seen=seen)

      final = jax.lax.while_loop(cond, body, init)
    logits = final["logits"][:, :n] if return_logits else final["logits"]
    # The cache is returned (and dropped by the caller) so that the donated input cache
    # aliases it: the loop updates it in place instead of holding a second copy.
    return final["out"], logits, final["cache"]

  def generate(self, params: Any, prompts: Sequence[dict], *, max_new_tokens: int,
               stop_ids: Sequence[int] = (),
               sampling_cfg: sampling.SamplingConfig | None = None,
               rng: jax.Array | None = None, return_logits: bool = False):
    """Continues each prompt.

    Args:
      params: the model's (unboxed) parameters.
      prompts: dicts with ``input_ids [n]``, ``token_hw [n, 2]``, ``pixel_values
        [num_ctx, 4, 3 P P] uint8`` (``data.processor`` with ``prompt_only``).
      max_new_tokens: tokens to generate at most per row.
      stop_ids: a row stops after one of these (it is not returned).
      sampling_cfg: how tokens are chosen (default greedy). The image-token ids
        are always banned.
      rng: PRNG key for sampling (default ``PRNGKey(0)``).
      return_logits: also return each step's logits ``[B, max_new_tokens, V]``
        float32 (step ``i``: the logits that chose token ``i``, before banning).

    Returns:
      Generated token ids per prompt (and the logits array when asked).

    Raises:
      ValueError: no prompts, ``max_new_tokens < 1``, or a prompt whose pixels do
        not match its ``<IMG_CONTEXT>`` tokens.
    """
    if not prompts:
      raise ValueError("No prompts to generate from.")
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1.")
    batch, lengths = self.prompts_batch(prompts)
    key = (max_new_tokens, tuple(int(x) for x in stop_ids),
           sampling_cfg or sampling.SamplingConfig(), return_logits, self.visual_slots(batch))
    start, loop = self._program(*key)
    rng = rng if rng is not None else jax.random.PRNGKey(0)
    self.timing = {"compile_s": 0.0}
    start = self._compiled(("start",) + key, start, params, batch, lengths, rng)
    t0 = time.perf_counter()
    init = jax.block_until_ready(start(params, batch, lengths, rng))
    t1 = time.perf_counter()
    cache = init.pop("cache")
    # From here on, compiling (first calls) is subtracted from the decode time.
    t2, compiled = time.perf_counter(), self.timing["compile_s"]
    if self.unrolled:   # the layers' weights and cache, one buffer per layer
      stacks = {k: params[k] for k in self.cfg.stack_layers}
      split = self._compiled(("split",), self._split, stacks, cache)
      layer_params, cache = split(stacks, cache)
      params = {**params, **layer_params}
    loop = self._compiled(("loop",) + key, loop, params, cache, init)
    out, logits, _ = loop(params, cache, init)
    del cache, init
    out = np.asarray(out)
    t3 = time.perf_counter()
    tokens = []
    for row in out:
      stop = np.flatnonzero(row == NO_TOKEN)
      tokens.append([int(x) for x in (row[:stop[0]] if len(stop) else row)])
    self.timing.update(prefill_s=t1 - t0,
                       decode_s=t3 - t2 - (self.timing["compile_s"] - compiled),
                       new_tokens=sum(len(t) for t in tokens))
    return (tokens, np.asarray(logits)) if return_logits else tokens
