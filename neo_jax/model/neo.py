"""The NEO / NEO-ov model: one decoder-only transformer, no vision encoder.

docs/design.md §1.5: ``embed_tokens`` -> visual tokens replace the ``<IMG_CONTEXT>``
embeddings -> pre-Buffer layers -> post-LLM layers -> ``norm`` -> ``lm_head``
(tied to ``embed_tokens`` when ``tie_word_embeddings``).

Parameter tree (names follow the release so that conversion is a table):
``vision_model/{patch_embedding,dense_embedding}/{kernel,bias}``,
``embed_tokens/embedding [vocab, D]``, ``prebuffer/layers/...`` and
``llm/layers/...`` (stacked, leading axis = layer), ``norm/scale [D]``,
``lm_head/kernel [D, vocab]`` (untied only).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from neo_jax.core import geometry
from neo_jax.model import compact_vocab, layers, positions as pos_lib
from neo_jax.model import visual_gather
from neo_jax.model.model_config import ModelConfig
from neo_jax.model.vision import VisionEmbeddings

Array = jax.Array


class LMHead(nn.Module):
  """The untied LM head's parameter ``kernel [D, vocab]`` (a ``Dense`` kernel's layout).

  Calling it returns the kernel: the model contracts it itself (full logits or
  vocabulary chunks in the loss), so it is a parameter holder, not a layer.
  """
  hidden_size: int
  vocab_size: int
  init_std: float
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self) -> Array:
    return self.param("kernel", layers.normal_init(self.init_std, ("embed", "vocab")),
                      (self.hidden_size, self.vocab_size), self.param_dtype)


class NEO(nn.Module):
  """The full model.

  ``__call__(input_ids, segment_ids, token_hw, pixel_values, return_hidden=False)``:
    input_ids, segment_ids: ``[B, S] int32``; token_hw ``[B, S, 2] int32``;
    pixel_values ``[B, S, 4, 3 P P] uint8`` (``core/geometry.token_pixels_shape``).
    Returns logits ``[B, S, V] float32`` (``logits``), or with ``return_hidden`` the
    final-normed hidden states ``[B, S, D]`` in the compute dtype (feed them to
    ``loss.lm_loss`` with ``neo.head_weights``).

  ``cache_mode`` (``layers.CACHE_MODES``): ``"prefill"`` runs ``__call__`` and fills
  the KV cache; ``"decode"`` is for ``decode_step``. Both apply with the
  ``"cache"`` collection (``infer/kv_cache.py``) mutable; the parameters are the same.
  ``unrolled_layers``: the decoder stacks as ``layers.DecoderStack(unrolled=True)``
  (parameters per layer: ``layers.unrolled_layer_params``; cache per layer).

  ``config`` is a ``ModelConfig``; a model ``ConfigDict`` (or mapping) given instead is
  converted once here (``ModelConfig.from_config_dict``: unknown keys and bad values
  raise ``ValueError``), so ``self.config`` is always typed.
  """
  config: ModelConfig
  cache_mode: str = "none"
  unrolled_layers: bool = False

  def __post_init__(self):
    if not isinstance(self.config, ModelConfig):
      object.__setattr__(self, "config", ModelConfig.from_config_dict(self.config))
    super().__post_init__()

  def setup(self):
    cfg = self.config
    pdt = layers.dtype_of(cfg.param_dtype)
    self.embed_tokens = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=layers.dtype_of(cfg.dtype), param_dtype=pdt,
        embedding_init=layers.normal_init(cfg.init_std, ("vocab", "embed")))
    self.vision_model = VisionEmbeddings(cfg)
    stacks = cfg.stack_layers  # prebuffer (when it has layers), llm
    if "prebuffer" in stacks:
      self.prebuffer = layers.DecoderStack(cfg, stacks["prebuffer"], self.cache_mode,
                                           self.unrolled_layers)
    self.llm = layers.DecoderStack(cfg, stacks["llm"], self.cache_mode, self.unrolled_layers)
    self.norm = layers.RMSNorm(cfg.rms_norm_eps, "embed", pdt)
    if not cfg.tie_word_embeddings:
      self.lm_head = LMHead(cfg.hidden_size, cfg.vocab_size, cfg.init_std, pdt)

  def embed(self, input_ids: Array, token_hw: Array, pixel_values: Array) -> Array:
    """Token embeddings with visual tokens substituted, ``[B, S, D]``."""
    cfg = self.config
    # Both operands laid out like every activation (batch-sharded), so the
    # select needs no resharding: the gather from the (vocab, embed)-sharded
    # table would otherwise leave ``text`` sharded on ``embed``.
    act = ("batch", "length", "embed")
    rows = compact_vocab.rows_of(input_ids, cfg.vocab_ids)
    text = nn.with_logical_constraint(self.embed_tokens(rows), act)
    is_ctx = input_ids == cfg.img_context_token_id
    m = cfg.max_visual_tokens
    if m:   # the patch embedder on the visual positions only (model/visual_gather.py)
      vis = visual_gather.embed_visual_gathered(self.vision_model, pixel_values, token_hw,
                                                is_ctx, m)
    else:
      vis = self.vision_model(pixel_values, token_hw)
    vis = nn.with_logical_constraint(vis, act)
    return jnp.where(is_ctx[..., None], vis.astype(text.dtype), text)

  def __call__(self, input_ids: Array, segment_ids: Array, token_hw: Array,
               pixel_values: Array, return_hidden: bool = False) -> Array:
    cfg = self.config
    positions = pos_lib.rope_positions(
        cfg.rope_mode, input_ids, segment_ids, token_hw,
        img_start_id=cfg.img_start_token_id, img_context_id=cfg.img_context_token_id)
    units = pos_lib.unit_ids(input_ids, img_start_id=cfg.img_start_token_id,
                             img_context_id=cfg.img_context_token_id)
    if cfg.attention_mask == "causal":
      units = jnp.zeros_like(units)   # no bidirectional image blocks: plain causal
    x = self.embed(input_ids, token_hw, pixel_values)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    if cfg.num_prebuffer_layers:
      x = self.prebuffer(x, positions, segment_ids, units)
    x = self.llm(x, positions, segment_ids, units)
    x = self.norm(x)
    if return_hidden:
      if self.is_initializing() and not cfg.tie_word_embeddings:
        self.lm_head()  # create lm_head/kernel when initialising without logits
      return x
    return self.logits(x)

  def decode_step(self, tokens: Array, t: Array, cache_index: Array) -> Array:
    """One generated text token per row through the cached layers (``cache_mode="decode"``).

    Args:
      tokens: ``[B] int32`` the tokens just chosen.
      t: ``[B] int32`` their temporal index (the release's inference rule,
        docs/design.md §1.7: previous max t + 1; h = w = 0). Under ``rope_mode="mrope"``
        it is Qwen2-VL's text position: all three indices equal ``t``.
      cache_index: ``[B] int32`` cache position to write them at (the row's length
        so far).

    Returns:
      ``[B, V] float32`` logits of the next token (``logits``).
    """
    cfg = self.config
    b = tokens.shape[0]
    ids = tokens[:, None]
    pixels = jnp.zeros((b, 1) + geometry.token_pixels_shape(cfg.patch_size), jnp.uint8)
    x = self.embed(ids, jnp.zeros((b, 1, 2), jnp.int32), pixels)
    if cfg.rope_mode == "mrope":
      positions = jnp.broadcast_to(t[:, None, None], (b, 1, 3))
    else:
      positions = jnp.concatenate([t[:, None, None], jnp.zeros((b, 1, 2), jnp.int32)], axis=-1)
    ones = jnp.ones((b, 1), jnp.int32)
    zeros = jnp.zeros((b, 1), jnp.int32)
    if cfg.num_prebuffer_layers:
      x = self.prebuffer(x, positions, ones, zeros, cache_index)
    x = self.llm(x, positions, ones, zeros, cache_index)
    return self.logits(self.norm(x))[:, 0]

  def logits(self, hidden: Array) -> Array:
    """``[..., D] -> [..., V] float32`` through the (tied or untied) LM head, read
    in its stored layout (``head_weights``). ``V`` is the id space
    (``compact_vocab.id_space``): ``vocab_size``, or with a compact vocabulary
    ``max(vocab_ids) + 1`` with ``-inf`` at the ids that have no row."""
    if self.config.tie_word_embeddings:
      w, spec = self.embed_tokens.embedding, "...d,vd->...v"
    else:
      w, spec = self.lm_head(), "...d,dv->...v"
    out = jnp.einsum(spec, hidden, w.astype(hidden.dtype), preferred_element_type=jnp.float32)
    return compact_vocab.expand_logits(out, self.config.vocab_ids)


def head_weights(params: Any, config: Any) -> tuple[Array, str]:
  """The LM head read from a parameter tree as stored, with its layout.

  Args:
    params: the model's ``params`` tree.
    config: a ``ModelConfig`` (or anything with ``tie_word_embeddings``).

  Returns:
    ``(embed_tokens/embedding [V, D], "vd")`` for a tied head,
    ``(lm_head/kernel [D, V], "dv")`` for an untied one: no transposed copy of a
    ``V x D`` matrix (``model/chunked_ce.py`` reads either layout). ``V`` is
    ``vocab_size`` rows; with a compact vocabulary, map targets to rows first
    (``loss.lm_loss(vocab_ids=...)``).
  """
  if config.tie_word_embeddings:
    return params["embed_tokens"]["embedding"], "vd"
  return params["lm_head"]["kernel"], "dv"
