"""Patch and visual-token geometry of NEO's pixel input (docs/design.md §1.1).

A visual token covers ``TOKEN_PIXELS x TOKEN_PIXELS`` pixels: ``DOWNSAMPLE x
DOWNSAMPLE`` patches of ``PATCH_SIZE x PATCH_SIZE`` pixels, each flattened
channel-major ``(c, y, x)`` into ``PATCH_BYTES`` uint8 values (the release's
``view(-1, 3, 16, 16)`` order). Pixels are normalised with the ImageNet mean and
std on device.
"""

from __future__ import annotations

PATCH_SIZE = 16                              # [pixels] side of a patch
DOWNSAMPLE = 2                               # patches per visual-token side
TOKEN_PIXELS = PATCH_SIZE * DOWNSAMPLE       # [pixels] side of a visual token (32)
NUM_CHANNELS = 3                             # RGB
PATCHES_PER_TOKEN = DOWNSAMPLE * DOWNSAMPLE  # 4
PATCH_BYTES = NUM_CHANNELS * PATCH_SIZE * PATCH_SIZE  # 768 uint8 values per patch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def patch_bytes(patch_size: int = PATCH_SIZE, num_channels: int = NUM_CHANNELS) -> int:
  """uint8 values in one flattened patch: ``num_channels * patch_size ** 2``."""
  return num_channels * patch_size * patch_size


def token_pixels_shape(patch_size: int = PATCH_SIZE) -> tuple[int, int]:
  """The trailing shape of ``pixel_values`` at one sequence position:
  ``(PATCHES_PER_TOKEN, patch_bytes(patch_size))`` = ``(4, 3 P P)``, the token's 2x2
  patches in (dy, dx) order, each flattened ``(c, y, x)`` (``core/batch.py``)."""
  return (PATCHES_PER_TOKEN, patch_bytes(patch_size))


def patch_offsets() -> tuple[tuple[int, ...], tuple[int, ...]]:
  """``(dy, dx)`` of the ``PATCHES_PER_TOKEN`` patches of a visual token, in the order
  ``token_pixels_shape`` lays them out: row-major over the ``DOWNSAMPLE x DOWNSAMPLE``
  group, ``((0, 0, 1, 1), (0, 1, 0, 1))``."""
  return (tuple(i // DOWNSAMPLE for i in range(PATCHES_PER_TOKEN)),
          tuple(i % DOWNSAMPLE for i in range(PATCHES_PER_TOKEN)))
