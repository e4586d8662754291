"""Export: our parameters -> the release's state dict and Hugging Face directory.

docs/design.md §5: ``export_pieces`` streams the release's tensors (names and layouts of
``param_mapping``) as blocks of rows, one layer or one block of vocabulary rows at
a time (``export_tensors``: whole tensors), ``export_release`` writes the
directory the authors' ``NEOChatModel`` and VLMEvalKit load (config, safetensors
shards written as the rows arrive, modeling code when given, tokenizer files
copied or built from the embedded Qwen BPE ranks), ``save_torch_state_dict`` a
plain PyTorch file.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from typing import Any, Iterator

import ml_collections
import numpy as np

from neo_jax.convert import hf_config, param_mapping as pm, safetensors_io
from neo_jax.convert.leaves import (TOKENIZER_FILES, Path, byte_bar, check_shape, flatten,
                                    np_dtype, prefetch)
from neo_jax.data import hf_tokenizer, tokenizer as tok_lib


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

  def shape(self, path: Path) -> tuple[int, ...]:
    return tuple(self.get(path).shape)

  def iter_reads(self, requests):
    """``(request, leaf[index])`` for ``(path, index)`` requests."""
    for path, index in requests:
      yield (path, index), self.get(path)[index]


def check_release_compatible(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError for a model variant the release's code cannot load or run
  (``model.rope_mode`` other than "native", ``model.attention_mask`` other than
  "mixed": the Table 3 ablations live only here), or one with a compact vocabulary
  (``model.vocab_ids``: the release's rows are token ids)."""
  bad = {k: getattr(cfg, k) for k, want in (("rope_mode", "native"), ("attention_mask", "mixed"))
         if getattr(cfg, k) != want}
  if bad:
    raise ValueError(f"This model is an ablation variant ({bad}); the release's NEOChatModel "
                     "runs only rope_mode='native' with attention_mask='mixed', so it cannot be "
                     "exported.")
  if tuple(getattr(cfg, "vocab_ids", ()) or ()):
    raise ValueError(f"This model has a compact vocabulary ({len(cfg.vocab_ids)} rows, "
                     "model.vocab_ids); the release's embedding and LM head have one row per "
                     "token id, so it cannot be exported.")


def convert_piece(hook, x: np.ndarray, cfg, dtype: np.dtype, *args) -> np.ndarray:
  """``hook(x, cfg, *args)`` (a layout hook) in ``dtype``, casting first when ``dtype`` is
  narrower (fewer bytes to transpose), after otherwise."""
  if dtype.itemsize < x.dtype.itemsize:
    return hook(x.astype(dtype), cfg, *args)
  return hook(x, cfg, *args).astype(dtype, copy=False)


def export_plan(cfg: ml_collections.ConfigDict, *, dtype: str = "bfloat16",
                vocab_size: int | None = None) -> list[tuple[str, tuple[int, ...], np.dtype]]:
  """``(release key, PyTorch shape, dtype)`` of every exported tensor, in
  ``export_pieces`` order (vocabulary rows cropped / padded to ``vocab_size``)."""
  dt, out = np_dtype(dtype), []
  for leaf in pm.leaves(cfg):
    inner = leaf.shape[1:] if leaf.stacked else leaf.shape
    shape = tuple(leaf.entry.torch_shape(inner, cfg))
    for key in leaf.keys:
      if vocab_size and key in pm.VOCAB_KEYS:
        shape = (vocab_size,) + shape[1:]
      out.append((key, shape, dt))
  return out


def export_pieces(source: Any, cfg: ml_collections.ConfigDict, *, dtype: str = "bfloat16",
                  vocab_size: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
  """The release's state dict as blocks of rows, in ``export_plan`` order.

  A stacked leaf is read one layer at a time, a vocabulary leaf one block of rows
  (``param_mapping.piece_slices``), while the next pieces are being read
  (``source.iter_reads``).

  Args:
    source: ``TreeSource`` or ``orbax_io.ParamReader`` (``shape(path)``,
      ``iter_reads(requests)``).
    cfg: our config.
    dtype: dtype of the yielded rows.
    vocab_size: crop / zero-pad the vocabulary rows to this many.

  Yields:
    ``(release key, rows)``: consecutive blocks of the leading axis of the tensor in
    the PyTorch layout (one block for all but the vocabulary tensors).

  Raises:
    KeyError: a parameter of ``cfg`` is missing from ``source``.
    ValueError: a parameter's shape does not match ``cfg`` (names the path), or an
      ablation variant the release cannot run (``check_release_compatible``).
  """
  check_release_compatible(cfg)
  dt = np_dtype(dtype)
  all_leaves = list(pm.leaves(cfg))
  for leaf in all_leaves:
    check_shape(source.shape(leaf.path), leaf.shape, "/".join(leaf.path))
  by_path = {leaf.path: leaf for leaf in all_leaves}
  requests = ((leaf.path, index) for leaf in all_leaves
              for index in pm.piece_slices(leaf.path, leaf.shape))
  for (path, index), x in source.iter_reads(requests):
    leaf = by_path[path]
    if leaf.stacked:
      yield leaf.keys[index[0].start], convert_piece(leaf.entry.to_torch, x[0], cfg, dt)
      continue
    rows = convert_piece(leaf.entry.to_torch, x, cfg, dt)
    key = leaf.keys[0]
    if vocab_size and key in pm.VOCAB_KEYS:
      axis = pm.VOCAB_AXIS[path]
      start, stop = index[axis].start, index[axis].stop
      rows = rows[: max(0, vocab_size - start)]
      if stop == leaf.shape[axis] and vocab_size > stop:  # zero rows after the last block
        if len(rows):
          yield key, rows
        block = max(1, pm.PIECE_BYTES // (4 * max(math.prod(rows.shape[1:]), 1)))
        for r in range(stop, vocab_size, block):
          yield key, np.zeros((min(block, vocab_size - r),) + rows.shape[1:], dt)
        continue
      if not len(rows):
        continue
    yield key, rows


def export_tensors(source: Any, cfg: ml_collections.ConfigDict, *, dtype: str = "bfloat16",
                   vocab_size: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
  """``export_pieces`` joined into whole tensors: ``(release key, array)``."""
  key, parts = None, []
  for k, rows in export_pieces(source, cfg, dtype=dtype, vocab_size=vocab_size):
    if k != key and parts:
      yield key, parts[0] if len(parts) == 1 else np.concatenate(parts)
      parts = []
    key = k
    parts.append(rows)
  if parts:
    yield key, parts[0] if len(parts) == 1 else np.concatenate(parts)


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

  It fits when the image token ids are those of docs/design.md §3.1 and the exported
  vocabulary (``vocab_size`` or ``cfg.vocab_size``) holds every tokenizer id.
  """
  ids = tok_lib.special_token_ids()
  want = {"img_context_token_id": ids[tok_lib.IMG_CONTEXT], "img_start_token_id": ids[tok_lib.IMG_START],
          "img_end_token_id": ids[tok_lib.IMG_END]}
  wrong = {k: (getattr(cfg, k), v) for k, v in want.items() if getattr(cfg, k) != v}
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
      (``neo_jax.data.hf_tokenizer``; docs/design.md §3.1 ids). Skipped, with a
      warning, when the model's image token ids are not those of docs/design.md §3.1 or it has
      fewer vocabulary rows than the tokenizer has ids (see
      ``builtin_tokenizer_mismatch``).
    modeling_dir: copy ``*.py`` from here (the release's ``to_hf`` folder) so
      that ``AutoModel.from_pretrained(dst, trust_remote_code=True)`` works.
    torch_file: also write a plain ``torch.save`` state dict here (holds the
      whole model in memory; needs torch).
    min_pixels / max_pixels: written into ``vision_config``.
    progress: tqdm bar in bytes (MB/s).

  Returns:
    ``{"shards": [...], "tokenizer_files": [...], "total_bytes": int}``.
  """
  os.makedirs(dst, exist_ok=True)
  writer = safetensors_io.ShardedWriter(
      dst, export_plan(cfg, dtype=dtype, vocab_size=vocab_size), max_shard_bytes)
  state = {} if torch_file else None
  start = time.perf_counter()
  with byte_bar(writer.total_bytes, "export", progress) as bar:
    for key, rows in prefetch(export_pieces(source, cfg, dtype=dtype, vocab_size=vocab_size)):
      writer.write(key, rows)
      bar.update(rows.nbytes)
      if state is not None:
        state.setdefault(key, []).append(rows)
    shards = writer.close()
  sec = time.perf_counter() - start
  logging.info("export: %.2f GB in %.1f s (%.0f MB/s).", writer.total_bytes / 1e9, sec,
               writer.total_bytes / 1e6 / max(sec, 1e-9))
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
          dst, model_max_length=int(cfg.max_position_embeddings))
  if modeling_dir:
    for name in os.listdir(modeling_dir):
      if name.endswith(".py"):
        shutil.copy(os.path.join(modeling_dir, name), os.path.join(dst, name))
  if state is not None:
    save_torch_state_dict({k: v[0] if len(v) == 1 else np.concatenate(v)
                           for k, v in state.items()}, torch_file)
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

