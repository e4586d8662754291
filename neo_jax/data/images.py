"""Images at native resolution: decode, ``smart_resize``, patchify (docs/design.md §1.1, §3.2).

The host ships raw resized RGB bytes in the model's input layout
(``neo_jax.core.batch``); ImageNet normalisation happens on device
(``normalize_pixels`` is the same computation, for tests and tools).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from typing import Any

import numpy as np
from PIL import Image

from neo_jax.data.errors import BadSample
from neo_jax.core import geometry, paths

FACTOR = geometry.TOKEN_PIXELS  # pixels per visual-token side: patch 16 x downsample 2.
PATCH = geometry.PATCH_SIZE
MAX_ASPECT_RATIO = 200
# Decoded-pixel limit above which a file is treated as a decompression bomb.
DEFAULT_MAX_IMAGE_PIXELS = 256_000_000


def smart_resize(height: int, width: int, factor: int = FACTOR, min_pixels: int = 65536,
                 max_pixels: int = 4194304) -> tuple[int, int]:
  """Native-resolution target size (docs/design.md §3.2, the release's numerics).

  Each side is rounded to the nearest multiple of ``factor`` (Python ``round``,
  i.e. half to even, as the release), at least ``factor``; if the area exceeds
  ``max_pixels`` both sides are scaled by ``1/sqrt(area/max)`` of the
  *original* size and floored to ``factor``; if below ``min_pixels`` scaled up
  by ``sqrt(min/area)`` and ceiled.

  Args:
    height, width: [pixels] source size, > 0.
    factor: [pixels] multiple of both output sides (32).
    min_pixels, max_pixels: [pixels] area bounds.
  Returns:
    ``(resized_height, resized_width)`` in pixels, multiples of ``factor``.
  Raises:
    BadSample("aspect_ratio"): ``max(h, w) / min(h, w) > 200``.
  """
  if min(height, width) <= 0:
    raise BadSample("corrupt_file", f"image size {height}x{width}")
  if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
    raise BadSample("aspect_ratio", f"{height}x{width} has aspect ratio > {MAX_ASPECT_RATIO}")
  h_bar = max(factor, round(height / factor) * factor)
  w_bar = max(factor, round(width / factor) * factor)
  if h_bar * w_bar > max_pixels:
    beta = math.sqrt(height * width / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h_bar = math.ceil(height * beta / factor) * factor
    w_bar = math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


def per_image_max_pixels(max_pixels: int, min_pixels: int, num_images: int) -> int:
  """Per-image pixel budget of a sample with ``num_images`` images (docs/design.md §3.2).

  One image: ``max_pixels``; n > 1: ``max(max_pixels * 2 // n, min_pixels)``
  (integer division as in the release).
  """
  if num_images <= 1:
    return max_pixels
  return max(max_pixels * 2 // num_images, min_pixels)


def to_rgb(img: Image.Image) -> Image.Image:
  """Converts any Pillow mode to 8-bit RGB.

  L, P, RGBA, LA, CMYK, YCbCr, ... use Pillow's ``convert("RGB")`` (alpha is
  dropped), as the release does (``Image.open(path).convert("RGB")``,
  VLMTrainKit/neo/data/data_processor.py:158). Single-channel 16-bit and 32-bit
  integer / float modes (``I;16*``, ``I``, ``F``) are scaled to 0..255 first:
  ``round(x * 255 / 65535)`` for ``I;16*`` or any value above 255, else ``x`` as is.
  **Deviation:** the release's ``convert("RGB")`` clips them (``min(x, 255)``), which
  turns a 16-bit picture that uses its range into a nearly white page (every value
  above 255 becomes 255); scaling keeps the picture. (16-bit-per-channel colour PNGs
  open as 8-bit RGB in Pillow and are not affected.)
  """
  if img.mode == "RGB":
    return img
  if img.mode.startswith("I") or img.mode == "F":
    arr = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
    arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "L").convert("RGB")
  return img.convert("RGB")


def release_eval_rgb(img: Image.Image) -> Image.Image:
  """RGB as the release's evaluation loads an image (``load_image_native`` in
  VLMEvalKit/vlmeval/vlm/neo/utils.py, and lmms-eval's ``neo_ov`` model).

  An RGBA image with at least one fully transparent and one visible pixel is pasted
  onto a plain background through its alpha; any other image is ``to_rgb``'s (alpha
  dropped). The release picks black when the visible pixels' mean exceeds 382.5, but
  that mean is over 0..255 channel values, so the background is always white; this
  keeps the release's outcome.
  """
  if img.mode != "RGBA":
    return to_rgb(img)
  alpha = np.asarray(img.getchannel("A"))
  if not (alpha == 0).any() or not (alpha > 0).any():
    return to_rgb(img)
  background = Image.new("RGB", img.size, (255, 255, 255))
  background.paste(img, mask=img.getchannel("A"))
  return background


def probe_image(src: Any, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
                ) -> tuple[Image.Image, str]:
  """Opens an image source without decoding its pixels (the header gives the size).

  Args:
    src: a file path (local or URL), encoded bytes, a ``PIL.Image`` or an
      ``[H, W(, C)]`` uint8 numpy array.
    max_image_pixels: [pixels] larger declared sizes raise (decompression bomb).
  Returns:
    ``(image, name)``: a lazily loaded ``PIL.Image`` whose ``size`` is
    ``(width, height)``, and a name for messages; ``load_image`` decodes it.
  Raises:
    BadSample("missing_file"): the path does not exist.
    BadSample("decompression_bomb"): the header declares more pixels.
    BadSample("corrupt_file"): Pillow cannot read the header.
  """
  if isinstance(src, Image.Image):
    return src, "<image>"
  if isinstance(src, np.ndarray):
    return Image.fromarray(src), "<array>"
  if isinstance(src, (bytes, bytearray)):
    fp, name = io.BytesIO(src), "<bytes>"
  else:
    name = os.fspath(src)
    if paths.is_url(name):           # an object: read it whole (images are small)
      try:
        fp = io.BytesIO(paths.read_bytes(name))
      except FileNotFoundError as e:
        raise BadSample("missing_file", name) from e
    elif not os.path.exists(name):
      raise BadSample("missing_file", name)
    else:
      fp = name
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      img = Image.open(fp)
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise BadSample("decompression_bomb", f"{name}: {e}") from e
  except Exception as e:  # Pillow raises many types for bad data.
    raise BadSample("corrupt_file", f"{name}: {type(e).__name__}: {e}") from e
  w, h = img.size
  if w * h > max_image_pixels:
    raise BadSample("decompression_bomb", f"{name}: {w}x{h} exceeds {max_image_pixels} pixels")
  return img, name


def load_image(img: Image.Image, name: str = "<image>", composite_rgba: bool = False
               ) -> Image.Image:
  """Decodes a ``probe_image`` result to an RGB ``PIL.Image`` (``to_rgb``, or
  ``release_eval_rgb`` with ``composite_rgba``).

  Raises:
    BadSample("corrupt_file"): Pillow cannot decode the data.
  """
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      img.load()
      return release_eval_rgb(img) if composite_rgba else to_rgb(img)
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise BadSample("decompression_bomb", f"{name}: {e}") from e
  except Exception as e:  # Pillow raises many types for bad data.
    raise BadSample("corrupt_file", f"{name}: {type(e).__name__}: {e}") from e


def open_image(src: Any, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
  """Decodes an image source to an RGB ``PIL.Image`` (``probe_image`` + ``load_image``).

  Raises:
    BadSample("missing_file" | "decompression_bomb" | "corrupt_file"): see
    ``probe_image`` and ``load_image``.
  """
  return load_image(*probe_image(src, max_image_pixels))


def resize_rgb(img: Image.Image, height: int, width: int) -> np.ndarray:
  """Bicubic resize (the release's ``Image.resize`` default) to ``[height, width, 3] uint8``."""
  if img.size != (width, height):
    img = img.resize((width, height), Image.Resampling.BICUBIC)
  return np.asarray(img, dtype=np.uint8).reshape(height, width, 3)


def patchify(rgb: np.ndarray) -> np.ndarray:
  """Cuts a resized image into the model's visual-token layout (``core/batch.py``).

  Args:
    rgb: ``[H, W, 3] uint8``, H and W multiples of 32.
  Returns:
    ``[H/32 * W/32, 4, 768] uint8``: row-major over the token grid; per token
    the patches (dy, dx) = (0,0), (0,1), (1,0), (1,1), each flattened (c, y, x).
  """
  h, w, c = rgb.shape
  gh, gw, k = h // FACTOR, w // FACTOR, geometry.DOWNSAMPLE
  x = rgb.reshape(gh, k, PATCH, gw, k, PATCH, c)  # r, dy, y, col, dx, x, c
  x = x.transpose(0, 3, 1, 4, 6, 2, 5)  # r, col, dy, dx, c, y, x
  return np.ascontiguousarray(x.reshape((gh * gw,) + geometry.token_pixels_shape(PATCH)))


def token_grid_hw(num_rows: int, num_cols: int) -> np.ndarray:
  """``[rows * cols, 2] int32`` (row, col) of each visual token, row-major."""
  r, c = np.meshgrid(np.arange(num_rows, dtype=np.int32), np.arange(num_cols, dtype=np.int32), indexing="ij")
  return np.stack([r.ravel(), c.ravel()], axis=-1)


def normalize_pixels(pixels: np.ndarray) -> np.ndarray:
  """ImageNet normalisation of uint8 patches ``[..., 4, 768]`` -> float32 (docs/design.md §1.1)."""
  x = pixels.astype(np.float32).reshape(*pixels.shape[:-1], 3, -1) / 255.0
  mean = np.asarray(geometry.IMAGENET_MEAN, np.float32)[:, None]
  std = np.asarray(geometry.IMAGENET_STD, np.float32)[:, None]
  return ((x - mean) / std).reshape(pixels.shape)


def load_native(src: Any, min_pixels: int, max_pixels: int,
                max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
  """Decode + smart_resize + patchify one image.

  Args:
    src: anything ``probe_image`` takes (a probed ``PIL.Image`` is decoded here).
    min_pixels, max_pixels: [pixels] ``smart_resize`` bounds.
  Returns:
    ``(pixels [n_tokens, 4, 768] uint8, (token_rows, token_cols))`` where the
    token grid is ``(grid_h / 2, grid_w / 2)`` = resized size / 32.
  Raises:
    BadSample: see ``probe_image``, ``load_image`` and ``smart_resize``.
  """
  img = open_image(src, max_image_pixels)
  return native_tokens(img, min_pixels, max_pixels)


def native_tokens(img: Image.Image, min_pixels: int, max_pixels: int
                  ) -> tuple[np.ndarray, tuple[int, int]]:
  """``smart_resize`` + patchify of a decoded RGB image (see ``load_native``)."""
  w, h = img.size
  rh, rw = smart_resize(h, w, FACTOR, min_pixels, max_pixels)
  return patchify(resize_rgb(img, rh, rw)), (rh // FACTOR, rw // FACTOR)
