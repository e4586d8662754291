"""Conversions: Qwen3 -> NEO, released NEO -> ours, ours -> release, all streaming.

Every function walks ``param_mapping.leaves(cfg)`` and yields or consumes one
piece at a time (``param_mapping.piece_slices``: one layer of a scanned stack, a
block of vocabulary rows, or a small leaf), so the peak memory is a few pieces
(the largest, one 9B post-LLM ``mlp`` layer, is 4096 x 12288 values), whatever
the model's size.

* ``qwen3_pieces``: docs/design.md §2. Qwen3 layer ``j`` -> post-LLM layer ``j``
  (release layer ``j + num_prebuffer_layers``); per head ``q_proj_hw =
  [w1, w3, w1, w3]`` from the quarters (along d) of ``q_proj``; ``k_proj_hw = 0``;
  H / W norms = 1; pre-Buffer projections and the patch embedder N(0, 0.02)
  (biases 0, norms 1); vocabulary grown to hold the NEO special tokens (new
  rows zero, as the release, or N(0, 0.02)); a missing ``lm_head`` of an untied
  model = copy of ``embed_tokens``.
* ``release_pieces``: a released NEO / NEO-ov checkpoint.
* ``export_pieces`` / ``export_release``: the release's state dict and
  directory (docs/design.md §5), tokenizer files included (copied from a given
  directory, else built from the embedded Qwen BPE ranks).
* ``random_pieces``: random weights of any config, generated per piece in the
  target dtype (the 9B check: no ``model.init`` in float32).
``*_leaves`` are the same streams assembled into whole leaves (tests, in-memory use).
"""

from __future__ import annotations

import logging
import os

import ml_collections
import numpy as np

from neo_jax.convert import hf_config, param_mapping as pm, safetensors_io
# The export side and the piece streams live in their own modules; this module is
# the package's one conversion namespace (``from neo_jax.convert import convert as cv``).
from neo_jax.convert.export import (TreeSource, builtin_tokenizer_mismatch, convert_piece,
                                    copy_tokenizer, export_pieces, export_plan, export_release,
                                    export_tensors, save_torch_state_dict)
from neo_jax.convert.leaves import (TOKENIZER_FILES, LeafIter, Path, Piece, PieceIter, assemble,
                                    check_shape, collect, index_shape, leaf_rng, np_dtype,
                                    random_leaf_pieces, random_leaves, random_pieces, total_bytes,
                                    write)
from neo_jax.core import tokens

__all__ = ["TreeSource", "builtin_tokenizer_mismatch", "copy_tokenizer", "export_pieces",
           "export_plan", "export_release", "export_tensors", "save_torch_state_dict",
           "TOKENIZER_FILES", "LeafIter", "Path", "Piece", "PieceIter", "assemble", "collect",
           "np_dtype", "random_leaves", "random_pieces", "total_bytes", "write", "qwen3_config",
           "qwen3_leaves", "qwen3_pieces", "release_config", "release_leaves", "release_pieces"]


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


def _vocab_pieces(reader: safetensors_io.SafetensorsReader, key: str, leaf: pm.Leaf,
                  cfg: ml_collections.ConfigDict, dt: np.dtype, new_rows: str,
                  seed: int) -> PieceIter:
  """A vocabulary leaf from the release-layout tensor ``key`` (``[rows, D]``), block
  by block of rows; rows past the stored ones are added (``new_rows``: "zero" or
  "normal", N(0, init_std), generator ``leaf_rng(seed, path, block)``) and stored
  rows past ``cfg.vocab_size`` dropped."""
  axis = pm.VOCAB_AXIS[leaf.path]
  src = reader.shape(key)
  want = leaf.entry.torch_shape(leaf.shape, cfg)
  check_shape(src[1:], want[1:], f"{key} (columns)")
  for b, index in enumerate(pm.piece_slices(leaf.path, leaf.shape)):
    start, stop = index[axis].start, index[axis].stop
    w = reader.get_rows(key, start, min(stop, src[0])) if start < src[0] else None
    extra = stop - max(start, src[0])
    if extra > 0:
      w = pm.resize_rows(w if w is not None else np.zeros((0,) + tuple(src[1:]), dt),
                         stop - start, init=new_rows, std=cfg.init_std,
                         rng=leaf_rng(seed, leaf.path, b))
    block = index_shape(index)
    yield Piece(leaf.path, leaf.shape, index, convert_piece(leaf.entry.from_torch, w, cfg, dt,
                                                            block))


def _layer_piece(reader, leaf: pm.Leaf, j: int, key: str, cfg, dt) -> Piece:
  """Layer ``j`` of a stacked leaf from the release tensor ``key``."""
  inner = leaf.shape[1:]
  w = reader.get(key)
  check_shape(w.shape, leaf.entry.torch_shape(inner, cfg), key)
  index = (slice(j, j + 1),) + tuple(slice(0, n) for n in inner)
  return Piece(leaf.path, leaf.shape, index,
               convert_piece(leaf.entry.from_torch, w, cfg, dt, inner)[None])


def qwen3_pieces(src: str, cfg: ml_collections.ConfigDict, *, dtype: str = "float32",
                 new_rows: str = "zero", seed: int = 0) -> PieceIter:
  """NEO parameters initialised from the Qwen3 checkpoint in ``src`` (docs/design.md §2),
  piece by piece.

  Args:
    src: Hugging Face Qwen3 directory (``config.json`` + safetensors).
    cfg: our config (from ``qwen3_config``).
    dtype: stored dtype of the yielded arrays.
    new_rows: "zero" (release) or "normal" (N(0, init_std)) for vocabulary rows
      added beyond the Qwen3 table.
    seed: seed of the random pre-Buffer / patch embedder / new rows.

  Yields:
    ``Piece``s (see ``leaves``).

  Raises:
    KeyError: a Qwen3 tensor is missing (the message names it).
    ValueError: a tensor's shape does not match the config (names the key).
  """
  reader = safetensors_io.SafetensorsReader(src)
  dt = np_dtype(dtype)
  strip = lambda key: key[len(pm.LANGUAGE_PREFIX):]
  for leaf in pm.leaves(cfg):
    rel = "/".join(leaf.entry.path)
    if leaf.path[0] in ("vision_model", "prebuffer"):
      yield from random_leaf_pieces(leaf, dt, cfg.init_std, seed)
    elif leaf.path in pm.VOCAB_AXIS:
      key = strip(leaf.entry.key)
      if leaf.path == ("lm_head", "kernel") and key not in reader:
        logging.info("Qwen3 checkpoint has no lm_head.weight: copying embed_tokens.")
        key = strip(pm.VOCAB_KEYS[0])
      yield from _vocab_pieces(reader, key, leaf, cfg, dt, new_rows, seed)
    elif not leaf.stacked:
      key = strip(leaf.entry.key)
      w = reader.get(key)
      check_shape(w.shape, leaf.entry.torch_shape(leaf.shape, cfg), key)
      yield Piece(leaf.path, leaf.shape, tuple(slice(0, n) for n in leaf.shape),
                  convert_piece(leaf.entry.from_torch, w, cfg, dt, leaf.shape))
    elif rel in pm.HW_ONLY:  # post-LLM H / W parts, derived per layer
      d = cfg.head_dim
      for j in range(leaf.shape[0]):
        index = (slice(j, j + 1),) + tuple(slice(0, n) for n in leaf.shape[1:])
        if rel == "self_attn/q_proj_hw/kernel":
          q = _layer_piece(reader, leaf, j, strip(
              pm.LANGUAGE_PREFIX + f"model.layers.{j}.self_attn.q_proj.weight"), cfg, dt).array
          q1, q3 = q[..., : d // 4], q[..., d // 2: 3 * d // 4]
          out = np.concatenate([q1, q3, q1, q3], axis=-1)
        elif rel == "self_attn/k_proj_hw/kernel":
          out = np.zeros(index_shape(index), dt)
        else:
          out = np.ones(index_shape(index), dt)
        yield Piece(leaf.path, leaf.shape, index, out)
    else:
      for j in range(leaf.shape[0]):
        yield _layer_piece(reader, leaf, j, strip(leaf.entry.key.format(i=j)), cfg, dt)


def qwen3_leaves(src: str, cfg: ml_collections.ConfigDict, **kwargs) -> LeafIter:
  """``qwen3_pieces`` assembled into whole leaves ``(path, array)``."""
  return assemble(qwen3_pieces(src, cfg, **kwargs))


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


def release_pieces(src: str, cfg: ml_collections.ConfigDict, *, dtype: str = "float32",
                   new_rows: str = "zero", seed: int = 0) -> PieceIter:
  """Our parameters from a released NEO / NEO-ov checkpoint (or our own export),
  piece by piece: one layer of a stack, one block of vocabulary rows, or a small leaf.

  Args:
    src: the release's Hugging Face directory.
    cfg: our config (from ``release_config``); a ``vocab_size`` different from
      the checkpoint's crops or grows the vocabulary rows (``new_rows``).
    dtype: stored dtype of the yielded arrays.
    new_rows: "zero" or "normal" for added vocabulary rows.
    seed: seed of the added rows.

  Yields:
    ``Piece``s (see ``leaves``). A tied model ignores a stored ``lm_head.weight``.

  Raises:
    KeyError: a tensor is missing (names the key; an untied model without
      ``language_model.lm_head.weight`` says so).
    ValueError: shape mismatch (names the key).
  """
  reader = safetensors_io.SafetensorsReader(src)
  dt = np_dtype(dtype)
  for leaf in pm.leaves(cfg):
    if leaf.path in pm.VOCAB_AXIS:
      reader.shape(leaf.keys[0])  # KeyError naming a missing key
      yield from _vocab_pieces(reader, leaf.keys[0], leaf, cfg, dt, new_rows, seed)
    elif leaf.stacked:
      for j, key in enumerate(leaf.keys):
        yield _layer_piece(reader, leaf, j, key, cfg, dt)
    else:
      w = reader.get(leaf.keys[0])
      check_shape(w.shape, leaf.entry.torch_shape(leaf.shape, cfg), leaf.keys[0])
      yield Piece(leaf.path, leaf.shape, tuple(slice(0, n) for n in leaf.shape),
                  convert_piece(leaf.entry.from_torch, w, cfg, dt, leaf.shape))


def release_leaves(src: str, cfg: ml_collections.ConfigDict, **kwargs) -> LeafIter:
  """``release_pieces`` assembled into whole leaves ``(path, array)`` (keyword
  arguments as ``release_pieces``)."""
  return assemble(release_pieces(src, cfg, **kwargs))
