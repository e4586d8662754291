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
import shutil
import zlib
from typing import Any, Callable, Iterator

import ml_collections
import numpy as np
import tqdm

from neo_jax.convert import hf_config, param_mapping as pm, safetensors_io
from neo_jax.convert.orbax_io import flatten
from neo_jax.data import hf_tokenizer, tokenizer as tok_lib

Path = tuple[str, ...]
LeafIter = Iterator[tuple[Path, np.ndarray]]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                   "chat_template.json", "generation_config.json")


def np_dtype(name: str) -> np.dtype:
  """"float32" / "fp32" / "bfloat16" / "bf16" -> numpy dtype (``ml_dtypes`` bfloat16)."""
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  names = {"float32": np.float32, "fp32": np.float32, "bfloat16": ml_dtypes.bfloat16,
           "bf16": ml_dtypes.bfloat16, "float16": np.float16, "fp16": np.float16}
  if name not in names:
    raise ValueError(f"dtype={name!r}: choose one of {sorted(names)}.")
  return np.dtype(names[name])


def _rng(seed: int, path: Path, layer: int = 0) -> np.random.Generator:
  return np.random.default_rng([seed, zlib.crc32("/".join(path).encode()), layer])


def _check_shape(got: tuple[int, ...], want: tuple[int, ...], what: str) -> None:
  if tuple(got) != tuple(want):
    raise ValueError(f"Shape mismatch for {what}: checkpoint has {tuple(got)}, "
                     f"the config expects {tuple(want)}.")


def _random_leaf(path: Path, shape: tuple[int, ...], dtype: np.dtype, std: float, seed: int,
                 stacked: bool) -> np.ndarray:
  """N(0, std) kernels, ones for norm scales, zeros for biases; per layer."""
  name = path[-1]
  if name == "scale":
    return np.ones(shape, dtype)
  if name == "bias":
    return np.zeros(shape, dtype)
  out = np.empty(shape, dtype)
  if stacked:
    for i in range(shape[0]):
      out[i] = (_rng(seed, path, i).standard_normal(shape[1:], dtype=np.float32) * std).astype(dtype)
  else:
    out[...] = (_rng(seed, path).standard_normal(shape, dtype=np.float32) * std).astype(dtype)
  return out


def random_leaves(cfg: ml_collections.ConfigDict, *, dtype: str = "float32",
                  seed: int = 0) -> LeafIter:
  """Random parameters for ``cfg`` (N(0, init_std) kernels and embeddings, unit
  norms, zero biases), one leaf at a time.

  Yields:
    ``(path, array)`` in ``param_mapping.leaves`` order, ``array`` in ``dtype``.
  """
  dt = np_dtype(dtype)
  for leaf in pm.leaves(cfg):
    yield leaf.path, _random_leaf(leaf.path, leaf.shape, dt, cfg.init_std, seed, leaf.stacked)


# ----------------------------------------------------------------------------
# Import.


def _default_vocab(cfg_ids: dict, src_rows: int) -> int:
  """Rows needed: the source rows, grown to hold the NEO special tokens."""
  if cfg_ids.get("img_context_token_id", 0) == hf_config.config_lib.IMG_CONTEXT_TOKEN_ID:
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
      yield leaf.path, _random_leaf(leaf.path, leaf.shape, dt, std, seed, leaf.stacked)
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
                             rng=_rng(seed, leaf.path))
      if leaf.path == ("embed_tokens", "embedding"):
        embed = w
      want = leaf.entry.torch_shape(leaf.shape, cfg)
      _check_shape(w.shape, want, key)
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
      _check_shape(w.shape, want, key)
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
                           rng=_rng(seed, leaf.path))
      _check_shape(w.shape, want, key)
      w = leaf.entry.from_torch(w, cfg, inner).astype(dt)
      if leaf.stacked:
        out[j] = w
      else:
        out = w
    yield leaf.path, out


# ----------------------------------------------------------------------------
# Export.


class TreeSource:
  """A parameter tree in memory with the ``ParamReader`` interface."""

  def __init__(self, params: Any):
    import flax.linen as nn  # pylint: disable=import-outside-toplevel
    import jax  # pylint: disable=import-outside-toplevel
    self._flat = dict(flatten(jax.device_get(nn.meta.unbox(params))))

  def __contains__(self, path: Path) -> bool:
    return tuple(path) in self._flat

  def paths(self) -> list[Path]:
    return list(self._flat)

  def get(self, path: Path) -> np.ndarray:
    if tuple(path) not in self._flat:
      raise KeyError(f"Parameter {'/'.join(path)} not in the parameter tree.")
    return np.asarray(self._flat[tuple(path)])


def export_tensors(source: Any, cfg: ml_collections.ConfigDict, *, dtype: str = "bfloat16",
                   vocab_size: int | None = None, progress: bool = False
                   ) -> Iterator[tuple[str, np.ndarray]]:
  """The release's state dict, one tensor at a time.

  Args:
    source: ``TreeSource`` or ``orbax_io.ParamReader`` (``get(path)``).
    cfg: our config.
    dtype: dtype of the yielded tensors.
    vocab_size: crop / zero-pad the vocabulary rows to this many.
    progress: show a tqdm bar (tensors).

  Yields:
    ``(release key, numpy array in the PyTorch layout)``.

  Raises:
    KeyError: a parameter of ``cfg`` is missing from ``source``.
    ValueError: a parameter's shape does not match ``cfg`` (names the path).
  """
  dt = np_dtype(dtype)
  all_leaves = list(pm.leaves(cfg))
  bar = tqdm.tqdm(total=sum(len(l.keys) for l in all_leaves), desc="export", unit="tensor",
                  disable=not progress)
  for leaf in all_leaves:
    x = source.get(leaf.path)
    _check_shape(x.shape, leaf.shape, "/".join(leaf.path))
    for j, key in enumerate(leaf.keys):
      t = leaf.entry.to_torch(x[j] if leaf.stacked else x, cfg)
      if vocab_size and key in pm.VOCAB_KEYS:
        t = pm.resize_rows(t, vocab_size)
      yield key, t.astype(dt)
      bar.update(1)
    del x
  bar.close()


def copy_tokenizer(tokenizer_dir: str, dst: str) -> list[str]:
  """Copies the tokenizer files found in ``tokenizer_dir`` to ``dst``.

  Raises:
    FileNotFoundError: the directory has none of ``TOKENIZER_FILES``.
  """
  copied = []
  for name in TOKENIZER_FILES:
    p = os.path.join(tokenizer_dir, name)
    if os.path.isfile(p):
      shutil.copy(p, os.path.join(dst, name))
      copied.append(name)
  if not copied:
    raise FileNotFoundError(f"No tokenizer files ({', '.join(TOKENIZER_FILES)}) in {tokenizer_dir}.")
  return copied


def builtin_tokenizer_mismatch(cfg: ml_collections.ConfigDict, vocab_size: int | None = None) -> str:
  """Why the built-in tokenizer does not fit ``cfg`` ('' if it does).

  It fits when the image token ids are NEO_SPEC §3.1's and the exported
  vocabulary (``vocab_size`` or ``cfg.vocab_size``) holds every tokenizer id.
  """
  ids = tok_lib.special_token_ids()
  want = {"img_context_token_id": ids[tok_lib.IMG_CONTEXT], "img_start_token_id": ids[tok_lib.IMG_START],
          "img_end_token_id": ids[tok_lib.IMG_END]}
  wrong = {k: (cfg[k], v) for k, v in want.items() if cfg.get(k) != v}
  if wrong:
    return f"image token ids {{name: (model, tokenizer)}} differ: {wrong}"
  rows = vocab_size or cfg.vocab_size
  if rows < max(ids.values()) + 1:
    return f"{rows} vocabulary rows < {max(ids.values()) + 1} tokenizer ids"
  return ""


def export_release(source: Any, cfg: ml_collections.ConfigDict, dst: str, *,
                   dtype: str = "bfloat16", max_shard_bytes: int = 2 * 1024 ** 3,
                   vocab_size: int | None = None, tokenizer_dir: str | None = None,
                   write_tokenizer: bool = True,
                   modeling_dir: str | None = None, torch_file: str | None = None,
                   min_pixels: int = 65536, max_pixels: int = 4194304,
                   progress: bool = True) -> dict:
  """Writes the release's Hugging Face directory for our parameters.

  Args:
    source: ``TreeSource`` / ``orbax_io.ParamReader``.
    cfg: our config.
    dst: output directory (created).
    dtype: stored dtype ("bfloat16" / "float32").
    max_shard_bytes: safetensors shard size limit.
    vocab_size: exported vocabulary rows (default ``cfg.vocab_size``).
    tokenizer_dir: copy the tokenizer files from here instead of writing them.
    write_tokenizer: without ``tokenizer_dir``, write the Qwen3 + NEO tokenizer
      files built offline from the embedded BPE ranks
      (``neo_jax.data.hf_tokenizer``; NEO_SPEC §3.1 ids). Skipped, with a
      warning, when the model's image token ids are not NEO_SPEC's or it has
      fewer vocabulary rows than the tokenizer has ids (see
      ``builtin_tokenizer_mismatch``).
    modeling_dir: copy ``*.py`` from here (the release's ``to_hf`` folder) so
      that ``AutoModel.from_pretrained(dst, trust_remote_code=True)`` works.
    torch_file: also write a plain ``torch.save`` state dict here (holds the
      whole model in memory; needs torch).
    min_pixels / max_pixels: written into ``vision_config``.
    progress: tqdm bar.

  Returns:
    ``{"shards": [...], "tokenizer_files": [...], "total_bytes": int}``.
  """
  os.makedirs(dst, exist_ok=True)
  writer = safetensors_io.ShardedWriter(dst, max_shard_bytes)
  state = {} if torch_file else None
  for key, t in export_tensors(source, cfg, dtype=dtype, vocab_size=vocab_size, progress=progress):
    writer.add(key, t)
    if state is not None:
      state[key] = t
  shards = writer.close()
  torch_dtype = "bfloat16" if np_dtype(dtype) != np.float32 else "float32"
  hf = hf_config.to_release_config(cfg, vocab_size=vocab_size, torch_dtype=torch_dtype,
                                   min_pixels=min_pixels, max_pixels=max_pixels)
  import json  # pylint: disable=import-outside-toplevel
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)
  tok = []
  if tokenizer_dir:
    tok = copy_tokenizer(tokenizer_dir, dst)
  elif write_tokenizer:
    mismatch = builtin_tokenizer_mismatch(cfg, vocab_size)
    if mismatch:
      logging.warning("Not writing the built-in tokenizer to %s: %s. Pass --tokenizer_dir with "
                      "this model's tokenizer files.", dst, mismatch)
    else:
      tok = hf_tokenizer.write_hf_tokenizer(
          dst, model_max_length=int(cfg.get("max_position_embeddings", 40960)))
  if modeling_dir:
    for name in os.listdir(modeling_dir):
      if name.endswith(".py"):
        shutil.copy(os.path.join(modeling_dir, name), os.path.join(dst, name))
  if state is not None:
    save_torch_state_dict(state, torch_file)
  return {"shards": shards, "tokenizer_files": tok, "total_bytes": writer.total_bytes}


def save_torch_state_dict(state: dict[str, np.ndarray], path: str) -> None:
  """``torch.save`` of numpy tensors (bfloat16 via a uint16 view)."""
  import torch  # pylint: disable=import-outside-toplevel
  out = {}
  for k, v in state.items():
    if v.dtype.name == "bfloat16":
      out[k] = torch.from_numpy(v.view(np.uint16).copy()).view(torch.bfloat16)
    else:
      out[k] = torch.from_numpy(np.ascontiguousarray(v))
  torch.save(out, path)


def collect(leaves: LeafIter) -> dict:
  """Nested parameter dict from ``(path, array)`` leaves (in memory)."""
  from neo_jax.convert.orbax_io import unflatten  # pylint: disable=import-outside-toplevel
  return unflatten(leaves)


def write(leaves: LeafIter, writer: Any, *, total: int | None = None,
          desc: str = "import", progress: bool = True,
          callback: Callable[[Path, np.ndarray], None] | None = None) -> None:
  """Streams leaves into an ``orbax_io.ParamWriter`` (then closes it)."""
  for path, arr in tqdm.tqdm(leaves, total=total, desc=desc, unit="leaf", disable=not progress):
    writer.put(path, arr)
    if callback:
      callback(path, arr)
  writer.close()
