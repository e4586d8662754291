"""Shared pieces of the model tests: a hand-built packed batch, parameters, weight export.

The batch (``packed_batch``) holds 2 rows of 2 packed samples each:
row 0 = a text-only sample, then a sample with one 64x96 image (token grid
2x3), then padding; row 1 = a sample with two images of different sizes
(64x96 -> 2x3 and 32x64 -> 1x2), then a 3-frame video (64x64 frames -> 2x2),
then padding. Pixels are random ``uint8``; text ids are random ids < 500 of the
tiny preset (``<IMG_CONTEXT>`` 500, ``<img>`` 501, ``</img>`` 502).
"""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from neo_jax.model import config as config_lib
from neo_jax.core import batch as inputs
from neo_jax.model import neo
from neo_jax.model import loss as loss_lib

SEQ_LEN = 64
P = 16


def tiny_config(**overrides):
  """The tiny preset in float32 with N(0, 0.1) initialisers (logits of order 1)."""
  kw = dict(dtype="float32", param_dtype="float32", init_std=0.1, remat_policy="none",
            attention_impl="xla")
  kw.update(overrides)
  return config_lib.get_model_config("tiny", **kw)


@dataclasses.dataclass
class PackedBatch:
  """A model batch plus what the reference needs (full images per row)."""
  batch: dict            # the model's batch (core/batch.py contract), numpy arrays
  images: list           # images[b]: list of [H, W, 3] uint8 in token order
  samples: list          # samples[b]: list of (segment id, first index, end index, kind)


def _image_block(img: np.ndarray, cfg) -> tuple[list, list, list]:
  """Tokens, token_hw rows and pixel rows of ``<img> ctx... </img>`` for one image."""
  gh, gw = img.shape[0] // 32, img.shape[1] // 32
  ids = [cfg.img_start_token_id] + [cfg.img_context_token_id] * (gh * gw) + [cfg.img_end_token_id]
  hw = [(0, 0)]
  pix = [np.zeros((4, 3 * P * P), np.uint8)]
  chw = img.transpose(2, 0, 1)  # [3, H, W]
  for r in range(gh):
    for c in range(gw):
      hw.append((r, c))
      groups = []
      for dy in range(2):
        for dx in range(2):
          y0, x0 = (2 * r + dy) * P, (2 * c + dx) * P
          groups.append(chw[:, y0:y0 + P, x0:x0 + P].reshape(-1))  # (c, y, x)
      pix.append(np.stack(groups))
  hw.append((0, 0))
  pix.append(np.zeros((4, 3 * P * P), np.uint8))
  return ids, hw, pix


def _text(rng, n):
  return [int(x) for x in rng.integers(0, 500, size=n)]


def packed_batch(cfg, seed: int = 0, seq_len: int = SEQ_LEN) -> PackedBatch:
  """Builds the test batch described in the module docstring.

  Labels: within every sample, the text tokens after its first token are
  supervised with probability 0.7 (so samples have different n); image tokens
  and the first token of each sample are not.
  """
  rng = np.random.default_rng(seed)
  img = lambda h, w: rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
  rows_spec = [
      [("text", []), ("image", [img(64, 96)])],
      [("two_images", [img(64, 96), img(32, 64)]), ("video", [img(64, 64) for _ in range(3)])],
  ]
  rows, pads = [], []
  all_images, all_samples = [], []
  for r, samples in enumerate(rows_spec):
    ids, hw, pix, seg, sup = [], [], [], [], []
    row_images, row_samples = [], []
    for s_idx, (kind, images) in enumerate(samples, start=1):
      start = len(ids)
      def add(tokens, t_hw=None, t_pix=None, supervise=True):
        ids.extend(tokens)
        hw.extend(t_hw or [(0, 0)] * len(tokens))
        pix.extend(t_pix or [np.zeros((4, 3 * P * P), np.uint8)] * len(tokens))
        seg.extend([s_idx] * len(tokens))
        sup.extend([supervise] * len(tokens))
      add(_text(rng, 1), supervise=False)
      if kind == "text":
        add(_text(rng, 13))
      elif kind == "video":
        add(_text(rng, 3))
        for frame in images:
          add(_text(rng, 2))  # the frame's time stamp
          i, h_, p_ = _image_block(frame, cfg)
          add(i, h_, p_, supervise=False)
        add(_text(rng, 3))
      else:
        for im in images:
          add(_text(rng, 3))
          i, h_, p_ = _image_block(im, cfg)
          add(i, h_, p_, supervise=False)
        add(_text(rng, 5))
      row_images.extend(images)
      row_samples.append((s_idx, start, len(ids), kind))
    n = len(ids)
    assert n < seq_len, (n, seq_len)
    pads.append(rng.integers(0, 500, size=seq_len - n))  # padding: any id
    keep = np.array(sup) & (rng.random(n) < 0.7)
    labels = np.where(keep, ids, inputs.IGNORE_INDEX)
    ids, seg, pix = np.asarray(ids), np.asarray(seg), np.stack(pix)
    ctx = ids == cfg.img_context_token_id
    rows.append([{"input_ids": ids[seg == k], "labels": labels[seg == k],
                  "token_hw": np.asarray(hw)[seg == k], "pixel_values": pix[(seg == k) & ctx]}
                 for k in range(1, len(samples) + 1)])
    all_images.append(row_images)
    all_samples.append(row_samples)
  out = inputs.assemble_batch(rows, seq_len, img_context_id=cfg.img_context_token_id,
                              patch_size=P)
  for r, pad in enumerate(pads):
    out["input_ids"][r, seq_len - len(pad):] = pad
  inputs.check_batch(out)
  return PackedBatch(out, all_images, all_samples)


def init_params(cfg, batch: dict | None = None, seed: int = 0):
  """Random parameters with the model's tree, drawn with NumPy (no init compile).

  The tree comes from ``jax.eval_shape(model.init)``. Kernels and embeddings
  are N(0, init_std); every norm scale U(0.5, 1.5) and bias N(0, 0.1), since
  ones / zeros would hide a norm applied to the wrong branch or a missing bias.
  ``batch`` is unused (parameters do not depend on the batch shape).
  """
  del batch
  model = neo.NEO(cfg)
  args = (jnp.zeros((1, 4), jnp.int32),) * 2 + (
      jnp.zeros((1, 4, 2), jnp.int32), jnp.zeros((1, 4, 4, 3 * P * P), jnp.uint8))
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), *args))["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "'scale'" in name:
      x = rng.uniform(0.5, 1.5, leaf.shape)
    elif "'bias'" in name:
      x = 0.1 * rng.standard_normal(leaf.shape)
    else:
      x = cfg.init_std * rng.standard_normal(leaf.shape)
    return jnp.asarray(x, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def model_args(batch: dict):
  return tuple(jnp.asarray(batch[k]) for k in ("input_ids", "segment_ids", "token_hw",
                                                "pixel_values"))


@functools.lru_cache(maxsize=None)
def _apply_fn(cfg_json: str, return_hidden: bool):
  model = neo.NEO(ml_collections.ConfigDict(json.loads(cfg_json)))
  return jax.jit(lambda params, batch: model.apply(
      {"params": params}, batch["input_ids"], batch["segment_ids"], batch["token_hw"],
      batch["pixel_values"], return_hidden=return_hidden))


def logits_fn(cfg):
  """Jitted ``(params, batch) -> logits [B, S, vocab] float32`` (cached per config)."""
  return _apply_fn(cfg.to_json(), False)


def hidden_fn(cfg):
  """Jitted ``(params, batch) -> final-normed hidden [B, S, D]`` (cached per config)."""
  return _apply_fn(cfg.to_json(), True)


@functools.partial(jax.jit, static_argnames=("mode", "chunk", "m"))
def _lm_loss(hidden, head, labels, segment_ids, *, mode, chunk, m):
  return loss_lib.lm_loss(hidden, head, labels, segment_ids, mode=mode, chunk=chunk,
                          max_supervised_tokens=m)


def head_weights(cfg, params):
  """The LM head ``[vocab, D]`` (``neo.head_weights``, transposed when stored ``[D, V]``)."""
  w, layout = neo.head_weights(params, cfg)
  return w if layout == "vd" else w.T


def model_loss(cfg, params, batch):
  """``loss.lm_loss`` of the model on ``batch`` as NumPy (forward and loss jitted apart,
  so configs that differ only in loss fields share the forward's compilation)."""
  fwd_cfg = cfg.copy_and_resolve_references()
  fwd_cfg.loss_weighting, fwd_cfg.max_supervised_tokens = "token", 0
  hidden = hidden_fn(fwd_cfg)(params, batch)
  out = _lm_loss(hidden, head_weights(cfg, params), batch["labels"], batch["segment_ids"],
                 mode=cfg.loss_weighting, chunk=cfg.loss_vocab_chunk,
                 m=cfg.max_supervised_tokens)
  return jax.tree_util.tree_map(np.asarray, out)


def reference_config(cfg) -> dict:
  """The config values the NumPy reference reads, as a plain dict."""
  keys = ("num_heads", "num_kv_heads", "head_dim", "rms_norm_eps", "rope_theta",
          "rope_theta_hw", "rope_theta_vision", "tie_word_embeddings",
          "img_context_token_id", "img_start_token_id", "img_end_token_id")
  out = {k: cfg[k] for k in keys}
  out["num_layers"] = cfg.num_prebuffer_layers + cfg.num_llm_layers
  return out


def export_weights(cfg, params) -> dict:
  """Flax parameters -> release state-dict names and layouts (docs/design.md §5.3), float64.

  Linear weights are ``[out, in]``, convolutions ``OIHW``; stacked layers are
  split into ``layers.{i}`` with the pre-Buffer first.
  """
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  d_model, v = cfg.hidden_size, cfg.vision_hidden
  w = {}
  vm = p["vision_model"]
  w["vision.patch_embedding.weight"] = vm["patch_embedding"]["kernel"].T.reshape(v, 3, P, P)
  w["vision.patch_embedding.bias"] = vm["patch_embedding"]["bias"]
  # kernel [4V, D] with rows (dy, dx, V) -> weight [D, V, dy, dx].
  w["vision.dense_embedding.weight"] = (
      vm["dense_embedding"]["kernel"].reshape(2, 2, v, d_model).transpose(3, 2, 0, 1))
  w["vision.dense_embedding.bias"] = vm["dense_embedding"]["bias"]
  w["embed_tokens.weight"] = p["embed_tokens"]["embedding"]
  w["norm.weight"] = p["norm"]["scale"]
  if not cfg.tie_word_embeddings:
    w["lm_head.weight"] = p["lm_head"]["kernel"].T
  stacks = ([p["prebuffer"]["layers"]] if cfg.num_prebuffer_layers else []) + [p["llm"]["layers"]]
  i = 0
  for stack in stacks:
    for l in range(stack["input_layernorm"]["scale"].shape[0]):
      pre = f"layers.{i}"
      sa, mlp = stack["self_attn"], stack["mlp"]
      for name in ("q_proj", "q_proj_hw", "k_proj", "k_proj_hw", "v_proj"):
        ker = sa[name]["kernel"][l]  # [D, H, d]
        w[f"{pre}.self_attn.{name}.weight"] = ker.reshape(ker.shape[0], -1).T
      ker = sa["o_proj"]["kernel"][l]  # [H, d, D]
      w[f"{pre}.self_attn.o_proj.weight"] = ker.reshape(-1, ker.shape[-1]).T
      for name in ("q_norm", "k_norm", "q_norm_h", "q_norm_w", "k_norm_h", "k_norm_w"):
        w[f"{pre}.self_attn.{name}.weight"] = sa[name]["scale"][l]
      for name in ("gate_proj", "up_proj", "down_proj"):
        w[f"{pre}.mlp.{name}.weight"] = mlp[name]["kernel"][l].T
      for name in ("input_layernorm", "post_attention_layernorm"):
        w[f"{pre}.{name}.weight"] = stack[name]["scale"][l]
      i += 1
  return w


def loss_terms(cfg, params, batch):
  """``loss.lm_loss`` of the model on a batch (not jitted; call under ``jax.jit``)."""
  model = neo.NEO(cfg)
  variables = {"params": params}
  hidden = model.apply(variables, batch["input_ids"], batch["segment_ids"], batch["token_hw"],
                       batch["pixel_values"], return_hidden=True)
  head = head_weights(cfg, params)
  return loss_lib.lm_loss(hidden, head, batch["labels"], batch["segment_ids"],
                          mode=cfg.loss_weighting, chunk=cfg.loss_vocab_chunk,
                          max_supervised_tokens=cfg.max_supervised_tokens)


def loss_value(cfg, params, batch):
  """Scalar ``weighted_ce / weight``."""
  out = loss_terms(cfg, params, batch)
  return out.weighted_ce / out.weight
