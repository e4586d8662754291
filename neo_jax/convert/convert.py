"""Conversions: Qwen3 -> NEO, released NEO -> ours, ours -> release, all streaming.

Every function walks ``param_mapping.leaves(cfg)`` and yields or consumes one
leaf at a time, so the peak memory is about one stacked leaf (the largest,
``mlp`` of the 9B post-LLM stack, is 36 x 4096 x 12288 values) plus one
safetensors shard.

* ``qwen3_leaves``: NEO_SPEC §2. Qwen3 layer ``j`` -> post-LLM layer ``j``
  (release layer ``j + num_prebuffer_layers``); per head ``q_proj_hw =
  [w1, w3, w1, w3]`` from the quarters (along d) of ``q_proj``; ``k_proj_hw = 0``;
  H / W norms = 1; pre-Buffer projections and the patch embedder N(0, 0.02)
  (biases 0, norms 1); vocabulary grown to hold the NEO special tokens (new
  rows zero, as the release, or N(0, 0.02)); a missing ``lm_head`` of an untied
  model = copy of ``embed_tokens``.
* ``release_leaves``: a released NEO / NEO-ov checkpoint.
* ``export_tensors`` / ``export_release``: the release's state dict and
  directory (NEO_SPEC §5), tokenizer files included (copied from a given
  directory, else built from the embedded Qwen BPE ranks).
* ``random_leaves``: random weights of any config, generated per layer in the
  target dtype (the 9B check: no ``model.init`` in float32).
"""

from __future__ import annotations

import logging
import os

import ml_collections
import numpy as np

from neo_jax.convert import hf_config, param_mapping as pm, safetensors_io
# The export side and the leaf streams live in their own modules; this module is
# the package's one conversion namespace (``from neo_jax.convert import convert as cv``).
from neo_jax.convert.export import (TreeSource, builtin_tokenizer_mismatch, copy_tokenizer,
                                    export_release, export_tensors, save_torch_state_dict)
from neo_jax.convert.leaves import (TOKENIZER_FILES, LeafIter, Path, check_shape, collect,
                                    leaf_rng, np_dtype, random_leaf, random_leaves, write)
from neo_jax.core import tokens

__all__ = ["TreeSource", "builtin_tokenizer_mismatch", "copy_tokenizer", "export_release",
           "export_tensors", "save_torch_state_dict", "TOKENIZER_FILES", "LeafIter", "Path",
           "collect", "np_dtype", "random_leaves", "write", "qwen3_config", "qwen3_leaves",
           "release_config", "release_leaves"]


# ----------------------------------------------------------------------------
# Import.


def _default_vocab(cfg_ids: dict, src_rows: int) -> int:
  """Rows needed: the source rows, grown to hold the NEO special tokens."""
  if cfg_ids.get("img_context_token_id", 0) == tokens.IMG_CONTEXT_TOKEN_ID:
    need = hf_config.NEO_LAST_SPECIAL_TOKEN_ID + 1
  else:
    need = max(cfg_ids.values()) + 1
  return max(src_rows, need)


def qwen3_config(src: str, *, num_prebuffer_layers: int, vocab_size: int | None = None,
                 **overrides) -> ml_collections.ConfigDict:
  """Our config for importing the Qwen3 directory ``src`` (see ``from_qwen3_config``).

  ``vocab_size`` None: the Qwen3 rows, grown to hold the NEO special tokens
  (ids up to 151681 with the default ids; the largest image token id otherwise).

  Raises:
    FileNotFoundError: ``src/config.json`` is missing.
  """
  hf = hf_config.read_json(os.path.join(src, "config.json"))
  cfg = hf_config.from_qwen3_config(hf, num_prebuffer_layers=num_prebuffer_layers, **overrides)
  ids = {k: cfg[k] for k in ("img_context_token_id", "img_start_token_id", "img_end_token_id")}
  cfg.vocab_size = vocab_size or _default_vocab(ids, hf["vocab_size"])
  if cfg.vocab_size <= max(ids.values()):
    raise ValueError(f"vocab_size={cfg.vocab_size} cannot hold image token ids {ids}.")
  return cfg


def qwen3_leaves(src: str, cfg: ml_collections.ConfigDict, *, dtype: str = "float32",
                 new_rows: str = "zero", seed: int = 0) -> LeafIter:
  """NEO parameters initialised from the Qwen3 checkpoint in ``src`` (NEO_SPEC §2).

  Args:
    src: Hugging Face Qwen3 directory (``config.json`` + safetensors).
    cfg: our config (from ``qwen3_config``).
    dtype: stored dtype of the yielded arrays.
    new_rows: "zero" (release) or "normal" (N(0, init_std)) for vocabulary rows
      added beyond the Qwen3 table.
    seed: seed of the random pre-Buffer / patch embedder / new rows.

  Yields:
    ``(path, array)`` leaves.

  Raises:
    KeyError: a Qwen3 tensor is missing (the message names it).
    ValueError: a tensor's shape does not match the config (names the key).
  """
  reader = safetensors_io.SafetensorsReader(src)
  dt = np_dtype(dtype)
  std = cfg.init_std
  strip = lambda key: key[len(pm.LANGUAGE_PREFIX):]
  q_proj = None
  embed = None
  for leaf in pm.leaves(cfg):
    rel = "/".join(leaf.entry.path)
    if leaf.path[0] in ("vision_model", "prebuffer"):
      yield leaf.path, random_leaf(leaf.path, leaf.shape, dt, std, seed, leaf.stacked)
      continue
    if not leaf.stacked:
      key = strip(leaf.entry.key)
      if leaf.path == ("lm_head", "kernel") and key not in reader:
        if embed is None:
          raise KeyError("embed_tokens must come before lm_head.")
        logging.info("Qwen3 checkpoint has no lm_head.weight: copying embed_tokens.")
        w = embed
      else:
        w = reader.get(key)
        if key in [strip(k) for k in pm.VOCAB_KEYS]:
          w = pm.resize_rows(w, cfg.vocab_size, init=new_rows, std=std,
                             rng=leaf_rng(seed, leaf.path))
      if leaf.path == ("embed_tokens", "embedding"):
        embed = w
      want = leaf.entry.torch_shape(leaf.shape, cfg)
      check_shape(w.shape, want, key)
      yield leaf.path, leaf.entry.from_torch(w, cfg, leaf.shape).astype(dt)
      continue
    # Post-LLM stack.
    if rel in pm.HW_ONLY:
      if rel == "self_attn/q_proj_hw/kernel":
        d = cfg.head_dim
        q1, q3 = q_proj[..., : d // 4], q_proj[..., d // 2: 3 * d // 4]
        out = np.concatenate([q1, q3, q1, q3], axis=-1)
      elif rel == "self_attn/k_proj_hw/kernel":
        out = np.zeros(leaf.shape, dt)
      else:
        out = np.ones(leaf.shape, dt)
      yield leaf.path, out
      continue
    out = np.empty(leaf.shape, dt)
    for j in range(leaf.shape[0]):
      key = strip(leaf.entry.key.format(i=j))
      w = reader.get(key)
      want = leaf.entry.torch_shape(leaf.shape[1:], cfg)
      check_shape(w.shape, want, key)
      out[j] = leaf.entry.from_torch(w, cfg, leaf.shape[1:]).astype(dt)
    if rel == "self_attn/q_proj/kernel":
      q_proj = out
    yield leaf.path, out


def release_config(src: str, **overrides) -> ml_collections.ConfigDict:
  """Our config for the released NEO / NEO-ov directory ``src``.

  Image token ids: ``config.json`` first, then the tokenizer files in
  ``src``, then NEO's defaults.

  Raises:
    FileNotFoundError: ``src/config.json`` is missing.
  """
  hf = hf_config.read_json(os.path.join(src, "config.json"))
  ids = hf_config.token_ids_from_tokenizer(src)
  return hf_config.from_release_config(hf, token_ids=ids, **overrides)


def release_leaves(src: str, cfg: ml_collections.ConfigDict, *, dtype: str = "float32",
                   new_rows: str = "zero", seed: int = 0) -> LeafIter:
  """Our parameters from a released NEO / NEO-ov checkpoint (or our own export).

  Args:
    src: the release's Hugging Face directory.
    cfg: our config (from ``release_config``); a ``vocab_size`` different from
      the checkpoint's crops or grows the vocabulary rows (``new_rows``).
    dtype: stored dtype of the yielded arrays.
    new_rows: "zero" or "normal" for added vocabulary rows.
    seed: seed of the added rows.

  Yields:
    ``(path, array)`` leaves. A tied model ignores a stored ``lm_head.weight``.

  Raises:
    KeyError: a tensor is missing (names the key; an untied model without
      ``language_model.lm_head.weight`` says so).
    ValueError: shape mismatch (names the key).
  """
  reader = safetensors_io.SafetensorsReader(src)
  dt = np_dtype(dtype)
  for leaf in pm.leaves(cfg):
    out = np.empty(leaf.shape, dt)
    inner = leaf.shape[1:] if leaf.stacked else leaf.shape
    want = leaf.entry.torch_shape(inner, cfg)
    for j, key in enumerate(leaf.keys):
      w = reader.get(key)
      if key in pm.VOCAB_KEYS:
        w = pm.resize_rows(w, cfg.vocab_size, init=new_rows, std=cfg.init_std,
                           rng=leaf_rng(seed, leaf.path))
      check_shape(w.shape, want, key)
      w = leaf.entry.from_torch(w, cfg, inner).astype(dt)
      if leaf.stacked:
        out[j] = w
      else:
        out = w
    yield leaf.path, out


