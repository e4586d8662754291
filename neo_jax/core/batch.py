"""The packed batch the model takes: the contract between ``data/`` and ``model/``.

Every array has a static shape ``[batch, seq]`` (plus trailing dims), so one
compiled train step serves every batch. A batch is a ``dict`` with:

``input_ids``: ``[B, S] int32``
    Token ids. Each image / video frame appears as ``<img>``, then one
    ``<IMG_CONTEXT>`` per visual token (row-major over the image's token grid),
    then ``</img>`` (docs/design.md §1.1). Padding uses any id (``<|endoftext|>``).
``labels``: ``[B, S] int32``
    Aligned with ``input_ids`` (not shifted): ``labels[b, i] = input_ids[b, i]``
    where token ``i`` is supervised, else ``IGNORE_INDEX`` (-100). The loss
    predicts ``labels[b, i + 1]`` from position ``i`` (docs/design.md §3.5). The first
    token of every packed sample must be unsupervised (it is ``<|im_start|>``),
    so no prediction crosses a sample boundary.
``segment_ids``: ``[B, S] int32``
    Packed-sample index: 1, 2, ... for the samples of a sequence, 0 for
    padding. Samples are contiguous and padding comes last.
``token_hw``: ``[B, S, 2] int32``
    ``(row, col)`` of an ``<IMG_CONTEXT>`` token in its image's token grid
    ``(grid_h / 2, grid_w / 2)`` (grid in 16-px patches); 0 elsewhere.
``pixel_values``: ``[B, S, 4, 3 * P * P] uint8`` (P = patch size, 16; ``geometry.token_pixels_shape``)
    At each ``<IMG_CONTEXT>`` position the four 16x16 patches of its 32x32
    pixel region, in order (dy, dx) = (0,0), (0,1), (1,0), (1,1); each patch
    flattened channel-major ``(c, y, x)`` (the release's ``view(-1, 3, 16, 16)``
    order). Raw resized RGB bytes: the model normalises with the ImageNet
    mean / std (docs/design.md §1.1) on device, so the host ships 4x fewer bytes
    than float32. Zeros at every other position.

The patch at (dy, dx) of token (row, col) sits at patch column
``x = 2 * col + dx`` and patch row ``y = 2 * row + dy``: the coordinates of
the patch embedder's 2D RoPE.

Derived inside the model by pure functions (``model/positions.py``): the
Native-RoPE indices t / h / w and the visual-unit ids of the mixed mask.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from neo_jax.core import geometry, tokens

IGNORE_INDEX = tokens.IGNORE_INDEX
BATCH_KEYS = ("input_ids", "labels", "segment_ids", "token_hw", "pixel_values")


def batch_shapes(batch_size: int, seq_len: int,
                 patch_size: int = geometry.PATCH_SIZE) -> dict:
  """Shapes and dtypes of a batch, as ``{key: (shape, numpy dtype)}``."""
  return {
      "input_ids": ((batch_size, seq_len), np.int32),
      "labels": ((batch_size, seq_len), np.int32),
      "segment_ids": ((batch_size, seq_len), np.int32),
      "token_hw": ((batch_size, seq_len, 2), np.int32),
      "pixel_values": ((batch_size, seq_len) + geometry.token_pixels_shape(patch_size),
                       np.uint8),
  }


def check_batch(batch: Mapping[str, np.ndarray], patch_size: int = geometry.PATCH_SIZE) -> None:
  """Checks keys, ranks and dtypes of a batch (host side, not under jit).

  Raises:
    ValueError: a key is missing, or an array has the wrong shape or dtype;
      the message names the key and what was expected.
  """
  missing = [k for k in BATCH_KEYS if k not in batch]
  if missing:
    raise ValueError(f"Batch is missing keys {missing}; a batch needs {list(BATCH_KEYS)}.")
  b, s = np.shape(batch["input_ids"])
  for key, (shape, dtype) in batch_shapes(b, s, patch_size).items():
    arr = batch[key]
    if tuple(np.shape(arr)) != shape:
      raise ValueError(f"batch[{key!r}] has shape {np.shape(arr)}, expected {shape}.")
    if np.dtype(arr.dtype) != np.dtype(dtype):
      raise ValueError(f"batch[{key!r}] has dtype {arr.dtype}, expected {np.dtype(dtype).name}.")


def assemble_batch(rows: Sequence[Sequence[Mapping]], seq_len: int, *,
                   pad_id: int = tokens.PAD_TOKEN_ID,
                   img_context_id: int = tokens.IMG_CONTEXT_TOKEN_ID,
                   patch_size: int = geometry.PATCH_SIZE) -> dict[str, np.ndarray]:
  """Concatenates each row's samples into one padded row of a batch.

  The one place where ``[B, S]`` batches are built: the packer, the random
  batches and generation all call it.

  Args:
    rows: ``B`` sequences of samples; a sample is a mapping with
      ``input_ids [n] int``, ``token_hw [n, 2] int``, ``pixel_values
      [num_ctx, 4, 3 P P] uint8`` (the sample's visual tokens in order; any
      array of ``num_ctx * 4 * 3 P P`` values) and optionally ``labels [n] int``
      (default: none supervised) and ``record_id`` (named in errors).
    seq_len: ``S`` [tokens] of every row.
    pad_id: ``input_ids`` of padding positions.
    img_context_id: the id whose positions receive the sample's visual tokens.
    patch_size: [pixels] patch side P.

  Returns:
    The batch of the module docstring, numpy arrays: segment ids ``1..k`` for
    the ``k`` samples of a row, then padding (segment 0, label -100, id
    ``pad_id``, zero pixels and positions).

  Raises:
    ValueError: a row's samples exceed ``seq_len``, or a sample's
      ``<IMG_CONTEXT>`` count differs from its number of visual tokens.
  """
  token_pixels = geometry.token_pixels_shape(patch_size)
  out = {k: np.zeros(shape, dt) for k, (shape, dt) in
         batch_shapes(len(rows), seq_len, patch_size).items()}
  out["input_ids"][:] = pad_id
  out["labels"][:] = IGNORE_INDEX
  for r, samples in enumerate(rows):
    pos = 0
    for k, el in enumerate(samples):
      ids = np.asarray(el["input_ids"])
      n = len(ids)
      if pos + n > seq_len:
        raise ValueError(f"Row {r} overflows seq_len={seq_len}: sample {k} "
                         f"(record {el.get('record_id')}) needs positions {pos}..{pos + n}.")
      sl = slice(pos, pos + n)
      out["input_ids"][r, sl] = ids
      if el.get("labels") is not None:
        out["labels"][r, sl] = el["labels"]
      out["segment_ids"][r, sl] = k + 1
      out["token_hw"][r, sl] = np.asarray(el["token_hw"]).reshape(n, 2)
      ctx = np.flatnonzero(ids == img_context_id)
      pix = np.asarray(el["pixel_values"]).reshape((-1,) + token_pixels)
      if len(ctx) != len(pix):
        raise ValueError(f"Record {el.get('record_id')}: {len(ctx)} <IMG_CONTEXT> tokens for "
                         f"{len(pix)} visual tokens of pixels.")
      if len(ctx):
        out["pixel_values"][r, pos + ctx] = pix
      pos += n
  return out


def padded_length(n: int, bucket: int | None = None) -> int:
  """The padded length [tokens] a batch of prompts of at most ``n`` tokens is built at.

  ``bucket`` given: the next multiple of it. ``None``: geometric buckets, the next
  multiple of ``max(16, 2 ** (bit_length(n) - 4))``, i.e. 16 below 256 tokens and
  1/8 of the power of two below ``n`` above: at most 1/8 of a row (and 15 tokens) is
  padding, where a fixed bucket of 64 pads a 102-token prompt to 128 (25%), and
  eight programs cover each octave of lengths (a fixed bucket needs ever more as
  prompts grow). Geometric lengths are multiples of 16.

  Raises:
    ValueError: ``n < 1`` or ``bucket < 1``.
  """
  if n < 1 or (bucket is not None and bucket < 1):
    raise ValueError(f"padded_length needs n >= 1 and bucket >= 1, got {n}, {bucket}.")
  step = bucket if bucket is not None else max(16, 2 ** (n.bit_length() - 4))
  return -(-n // step) * step


def prompt_batch(prompts: Sequence[Mapping], seq_len: int, *, img_context_id: int,
                 patch_size: int = geometry.PATCH_SIZE,
                 pad_segment: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Prompts, one per row, right-padded to ``seq_len``: the batch generation and
  scoring feed the model (no ``labels``), and the prompt lengths.

  The one builder of prompt batches: the cached decoder (``infer/decode.py``), the
  uncached oracle (``infer/generate.py``) and likelihood scoring
  (``eval/likelihood.py``) all call it.

  Args:
    prompts: mappings with ``input_ids [n] int``, ``token_hw [n, 2] int`` and
      ``pixel_values [num_ctx, 4, 3 P P] uint8`` (the visual tokens in order).
    seq_len: ``S`` [tokens] of every row (>= the longest prompt).
    img_context_id: the ``<IMG_CONTEXT>`` id.
    patch_size: [pixels] patch side P.
    pad_segment: segment id of the padding positions: 0 (the cached decoder: padding
      is outside every sample) or 1 (the uncached oracle appends its tokens in the
      padding, which must see the prompt).

  Returns:
    ``(batch, lengths)``: ``input_ids``, ``segment_ids`` (1 on each prompt),
    ``token_hw``, ``pixel_values`` as in the module docstring; ``lengths [B] int32``.

  Raises:
    ValueError: a prompt longer than ``seq_len`` (naming it), or a pixel count that
      does not match its ``<IMG_CONTEXT>`` tokens.
  """
  if pad_segment not in (0, 1):
    raise ValueError(f"pad_segment={pad_segment} is not 0 or 1.")
  for i, p in enumerate(prompts):
    if len(p["input_ids"]) > seq_len:
      raise ValueError(f"Prompt {i} has {len(p['input_ids'])} tokens, longer than the "
                       f"row of {seq_len}.")
  batch = assemble_batch([[dict(p, labels=None, record_id=f"prompt {i}")]
                          for i, p in enumerate(prompts)], seq_len, pad_id=0,
                         img_context_id=img_context_id, patch_size=patch_size)
  batch.pop("labels")
  lengths = (batch["segment_ids"] > 0).sum(axis=1).astype(np.int32)
  if pad_segment:
    batch["segment_ids"] = np.ones_like(batch["segment_ids"])
  return batch, lengths
