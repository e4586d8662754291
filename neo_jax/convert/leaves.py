"""Parameters as streams of ``(path, array)`` leaves, the currency of the converters.

A conversion never holds a whole model: it yields one leaf at a time in
``param_mapping.leaves(cfg)`` order, and writers consume them. Here: the leaf
types, dtype names, shape checks, random leaves of any config (generated per layer
in the target dtype), and the two sinks (``collect`` into memory, ``write`` into
an ``orbax_io.ParamWriter``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator
import zlib

import ml_collections
import numpy as np
import tqdm

from neo_jax.convert import param_mapping as pm

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


def leaf_rng(seed: int, path: Path, layer: int = 0) -> np.random.Generator:
  return np.random.default_rng([seed, zlib.crc32("/".join(path).encode()), layer])


def check_shape(got: tuple[int, ...], want: tuple[int, ...], what: str) -> None:
  """Raises ValueError naming ``what`` when a checkpoint's shape is not the config's."""
  if tuple(got) != tuple(want):
    raise ValueError(f"Shape mismatch for {what}: checkpoint has {tuple(got)}, "
                     f"the config expects {tuple(want)}.")


def random_leaf(path: Path, shape: tuple[int, ...], dtype: np.dtype, std: float, seed: int,
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
      draw = leaf_rng(seed, path, i).standard_normal(shape[1:], dtype=np.float32)
      out[i] = (draw * std).astype(dtype)
  else:
    out[...] = (leaf_rng(seed, path).standard_normal(shape, dtype=np.float32) * std).astype(dtype)
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
    yield leaf.path, random_leaf(leaf.path, leaf.shape, dt, cfg.init_std, seed, leaf.stacked)



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
