"""Parameters as streams of pieces, the currency of the converters.

A conversion never holds a whole model, nor a whole stacked leaf: it yields
``Piece(path, shape, index, array)`` items, ``array = leaf[index]``, in
``param_mapping.leaves(cfg)`` order and, within a leaf, in
``param_mapping.piece_slices`` order (one layer of a scanned stack, a block of
vocabulary rows, or a whole small leaf), and writers consume them. Here: the piece
type, dtype names, shape checks, random pieces of any config (generated per piece
in the target dtype), and the sinks: ``assemble`` into whole leaves, ``collect``
into a tree in memory, ``write`` into an ``orbax_io.ParamWriter`` with a progress
bar in bytes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator, NamedTuple
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


class Piece(NamedTuple):
  """``array == leaf[index]`` for the leaf at ``path`` of full ``shape``.

  ``index`` has one ``slice`` per axis; ``array.dtype`` is the leaf's dtype.
  """
  path: Path
  shape: tuple[int, ...]
  index: tuple[slice, ...]
  array: np.ndarray


PieceIter = Iterator[Piece]


def np_dtype(name: str) -> np.dtype:
  """"float32" / "fp32" / "bfloat16" / "bf16" -> numpy dtype (``ml_dtypes`` bfloat16)."""
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  names = {"float32": np.float32, "fp32": np.float32, "bfloat16": ml_dtypes.bfloat16,
           "bf16": ml_dtypes.bfloat16, "float16": np.float16, "fp16": np.float16}
  if name not in names:
    raise ValueError(f"dtype={name!r}: choose one of {sorted(names)}.")
  return np.dtype(names[name])


def leaf_rng(seed: int, path: Path, layer: int = 0) -> np.random.Generator:
  """The generator of piece ``layer`` (a stack's layer, a vocabulary block) of ``path``."""
  return np.random.default_rng([seed, zlib.crc32("/".join(path).encode()), layer])


def check_shape(got: tuple[int, ...], want: tuple[int, ...], what: str) -> None:
  """Raises ValueError naming ``what`` when a checkpoint's shape is not the config's."""
  if tuple(got) != tuple(want):
    raise ValueError(f"Shape mismatch for {what}: checkpoint has {tuple(got)}, "
                     f"the config expects {tuple(want)}.")


def index_shape(index: tuple[slice, ...]) -> tuple[int, ...]:
  """Shape of ``leaf[index]`` for an index of ``param_mapping.piece_slices``."""
  return tuple(s.stop - s.start for s in index)


def random_piece(path: Path, index: tuple[slice, ...], number: int, dtype: np.dtype,
                 std: float, seed: int) -> np.ndarray:
  """Piece ``number`` of a random leaf: N(0, std) kernels and embeddings, ones for
  norm scales, zeros for biases.

  Each piece has its own generator ``leaf_rng(seed, path, number)`` (``number`` =
  the layer of a stack, the block of a vocabulary leaf, 0 for a one-piece leaf),
  so a layer's values do not depend on the other layers.
  """
  shape = index_shape(index)
  if path[-1] == "scale":
    return np.ones(shape, dtype)
  if path[-1] == "bias":
    return np.zeros(shape, dtype)
  draw = leaf_rng(seed, path, number).standard_normal(shape, dtype=np.float32)
  return (draw * std).astype(dtype)


def random_leaf_pieces(leaf: pm.Leaf, dtype: np.dtype, std: float, seed: int) -> PieceIter:
  """The pieces of one random leaf (see ``random_piece``)."""
  for number, index in enumerate(pm.piece_slices(leaf.path, leaf.shape)):
    yield Piece(leaf.path, leaf.shape, index,
                random_piece(leaf.path, index, number, dtype, std, seed))


def random_pieces(cfg: ml_collections.ConfigDict, *, dtype: str = "float32",
                  seed: int = 0) -> PieceIter:
  """Random parameters for ``cfg`` (N(0, init_std) kernels and embeddings, unit
  norms, zero biases), one piece at a time, in ``dtype``."""
  dt = np_dtype(dtype)
  for leaf in pm.leaves(cfg):
    yield from random_leaf_pieces(leaf, dt, cfg.init_std, seed)


def random_leaves(cfg: ml_collections.ConfigDict, *, dtype: str = "float32",
                  seed: int = 0) -> LeafIter:
  """``random_pieces`` assembled into whole leaves (``(path, array)``)."""
  return assemble(random_pieces(cfg, dtype=dtype, seed=seed))


def assemble(pieces: Iterable[Piece]) -> LeafIter:
  """Whole leaves ``(path, array)`` from a piece stream (each leaf's pieces adjacent).

  Raises:
    ValueError: a leaf's pieces do not cover it.
  """
  path, out, filled = None, None, 0

  def done():
    if filled != out.size:
      raise ValueError(f"Pieces of {'/'.join(path)} cover {filled} of {out.size} values.")
    return path, out

  for p in pieces:
    if p.path != path:
      if path is not None:
        yield done()
      path, out, filled = p.path, np.empty(p.shape, p.array.dtype), 0
    out[p.index] = p.array
    filled += p.array.size
  if path is not None:
    yield done()


def split(path: Path, array: Any) -> PieceIter:
  """A whole leaf cut into its ``param_mapping.piece_slices`` pieces (views)."""
  array = np.asarray(array)
  for index in pm.piece_slices(path, array.shape):
    yield Piece(path, array.shape, index, array[index])


def flatten(tree: Any, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
  """``(path, leaf)`` pairs of a nested dict, depth first in key order."""
  if isinstance(tree, dict) or hasattr(tree, "items"):
    for k in sorted(tree):
      yield from flatten(tree[k], prefix + (str(k),))
  else:
    yield prefix, tree


def unflatten(pairs: Iterable[tuple[Path, Any]]) -> dict:
  """Nested dict from ``(path, leaf)`` pairs."""
  out: dict = {}
  for path, v in pairs:
    d = out
    for name in path[:-1]:
      d = d.setdefault(name, {})
    d[path[-1]] = v
  return out


def collect(pieces: Iterable) -> dict:
  """Nested parameter dict (in memory) from pieces or from ``(path, array)`` leaves."""
  it = iter(pieces)
  first = next(it, None)
  if first is None:
    return {}

  def chain():
    yield first
    yield from it
  return unflatten(assemble(chain()) if isinstance(first, Piece) else chain())


def prefetch(items: Iterable, depth: int = 1) -> Iterator:
  """``items`` produced in a background thread, at most ``depth`` ahead of the consumer.

  A converter's producer (read a piece, transpose, cast) then runs while the
  consumer writes the previous piece; both mostly wait on I/O or run NumPy copies
  that release the GIL. An exception in the producer is raised in the consumer.
  """
  q: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()
  end = object()

  def produce():
    try:
      for item in items:
        while not stop.is_set():
          try:
            q.put((item, None), timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      q.put((end, None))
    except BaseException as e:  # pylint: disable=broad-except
      q.put((end, e))

  thread = threading.Thread(target=produce, name="neo_jax-prefetch", daemon=True)
  thread.start()
  try:
    while True:
      item, err = q.get()
      if item is end:
        if err is not None:
          raise err
        return
      yield item
  finally:
    stop.set()


def total_bytes(cfg: ml_collections.ConfigDict, dtype: str) -> int:
  """Bytes of all leaves of ``cfg`` in ``dtype`` (the progress bars' total)."""
  return sum(int(np.prod(l.shape)) for l in pm.leaves(cfg)) * np_dtype(dtype).itemsize


def byte_bar(total: int, desc: str, progress: bool) -> tqdm.tqdm:
  """A tqdm bar counting bytes (shows MB and MB/s)."""
  return tqdm.tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1000,
                   disable=not progress, smoothing=0.1)


def write(pieces: Iterable[Piece], writer: Any, *, total: int | None = None,
          desc: str = "import", progress: bool = True,
          callback: Callable[[Piece], None] | None = None) -> None:
  """Streams pieces into an ``orbax_io.ParamWriter`` (then closes it).

  The pieces are produced (read, converted) one ahead in a background thread
  (``prefetch``) while the writer commits the previous ones. ``total``: bytes
  expected (for the bar). Logs the bytes written and the rate.
  """
  start, n = time.perf_counter(), 0
  with byte_bar(total or 0, desc, progress) as bar:
    for p in prefetch(pieces):
      writer.write(p.path, p.shape, p.index, p.array)
      n += p.array.nbytes
      bar.update(p.array.nbytes)
      if callback:
        callback(p)
    writer.close()
  dt = time.perf_counter() - start
  logging.info("%s: %.2f GB in %.1f s (%.0f MB/s).", desc, n / 1e9, dt, n / 1e6 / max(dt, 1e-9))
