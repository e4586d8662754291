"""The packed batch the model takes: the contract between ``data/`` and ``model/``.

Every array has a static shape ``[batch, seq]`` (plus trailing dims), so one
compiled train step serves every batch. A batch is a ``dict`` with:

``input_ids``: ``[B, S] int32``
    Token ids. Each image / video frame appears as ``<img>``, then one
    ``<IMG_CONTEXT>`` per visual token (row-major over the image's token grid),
    then ``</img>`` (NEO_SPEC §1.1). Padding uses any id (``<|endoftext|>``).
``labels``: ``[B, S] int32``
    Aligned with ``input_ids`` (not shifted): ``labels[b, i] = input_ids[b, i]``
    where token ``i`` is supervised, else ``IGNORE_INDEX`` (-100). The loss
    predicts ``labels[b, i + 1]`` from position ``i`` (NEO_SPEC §3.5). The first
    token of every packed sample must be unsupervised (it is ``<|im_start|>``),
    so no prediction crosses a sample boundary.
``segment_ids``: ``[B, S] int32``
    Packed-sample index: 1, 2, ... for the samples of a sequence, 0 for
    padding. Samples are contiguous and padding comes last.
``token_hw``: ``[B, S, 2] int32``
    ``(row, col)`` of an ``<IMG_CONTEXT>`` token in its image's token grid
    ``(grid_h / 2, grid_w / 2)`` (grid in 16-px patches); 0 elsewhere.
``pixel_values``: ``[B, S, 4, 3 * P * P] uint8`` (P = patch size, 16)
    At each ``<IMG_CONTEXT>`` position the four 16x16 patches of its 32x32
    pixel region, in order (dy, dx) = (0,0), (0,1), (1,0), (1,1); each patch
    flattened channel-major ``(c, y, x)`` (the release's ``view(-1, 3, 16, 16)``
    order). Raw resized RGB bytes: the model normalises with the ImageNet
    mean / std (NEO_SPEC §1.1) on device, so the host ships 4x fewer bytes
    than float32. Zeros at every other position.

The patch at (dy, dx) of token (row, col) sits at patch column
``x = 2 * col + dx`` and patch row ``y = 2 * row + dy``: the coordinates of
the patch embedder's 2D RoPE.

Derived inside the model by pure functions (``positions.py``): the
Native-RoPE indices t / h / w and the visual-unit ids of the mixed mask.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

IGNORE_INDEX = -100
BATCH_KEYS = ("input_ids", "labels", "segment_ids", "token_hw", "pixel_values")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def batch_shapes(batch_size: int, seq_len: int, patch_size: int = 16) -> dict:
  """Shapes and dtypes of a batch, as ``{key: (shape, numpy dtype)}``."""
  return {
      "input_ids": ((batch_size, seq_len), np.int32),
      "labels": ((batch_size, seq_len), np.int32),
      "segment_ids": ((batch_size, seq_len), np.int32),
      "token_hw": ((batch_size, seq_len, 2), np.int32),
      "pixel_values": ((batch_size, seq_len, 4, 3 * patch_size * patch_size), np.uint8),
  }


def check_batch(batch: Mapping[str, np.ndarray], patch_size: int = 16) -> None:
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
