"""The conv patch embedder ("vision model" of NEO; docs/design.md §1.1).

Release (``modeling_neo_vit.py``): ``patch_embedding`` Conv 3 -> V, kernel =
stride = 16, exact GELU, 2D RoPE (interleaved pairs; first half of the
channels by patch column, second half by patch row), ``dense_embedding`` Conv
V -> D, kernel = stride = 2. With the batch layout of ``core/batch.py`` (each
visual token carries its 2x2 group of patches), both convolutions are plain
matmuls with no gather or scatter:

* ``patch_embedding.kernel [3 * P * P, V]`` = PyTorch ``weight [V, 3, P, P]``
  reshaped to ``[V, 3 P P]`` and transposed (patch flattened (c, y, x));
* ``dense_embedding.kernel [4 * V, D]`` = PyTorch ``weight [D, V, 2, 2]``
  transposed to ``[2, 2, V, D]`` (dy, dx, V, D) and reshaped.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from neo_jax.core import geometry
from neo_jax.model import layers, rope
from neo_jax.model.model_config import ModelConfig

Array = jax.Array


class VisionEmbeddings(nn.Module):
  """Pixels of each visual token -> one LLM embedding.

  Call: ``(pixel_values [B, S, 4, 3 P P] uint8 (or float in [0, 255]),
  token_hw [B, S, 2] int32) -> [B, S, D]`` in the compute dtype. Values at
  non-visual positions are computed and discarded by the caller
  (``jnp.where``), so shapes stay static.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, pixel_values: Array, token_hw: Array) -> Array:
    cfg = self.config
    dt, pdt = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
    p2 = cfg.patch_size * cfg.patch_size
    # ImageNet normalisation of raw bytes, channel-major (c, y, x) layout.
    mean = np.repeat(np.asarray(geometry.IMAGENET_MEAN, np.float32), p2)
    std = np.repeat(np.asarray(geometry.IMAGENET_STD, np.float32), p2)
    x = (pixel_values.astype(jnp.float32) / 255.0 - mean) / std  # [B, S, 4, 3PP]
    x = x.astype(dt)

    kinit = lambda axes: layers.normal_init(cfg.init_std, axes)
    binit = lambda axes: nn.with_logical_partitioning(nn.initializers.zeros, axes)
    patch = nn.Dense(cfg.vision_hidden, dtype=dt, param_dtype=pdt,
                     kernel_init=kinit(("patch", "vision")), bias_init=binit(("vision",)),
                     name="patch_embedding")(x)  # [B, S, 4, V]
    patch = nn.gelu(patch, approximate=False)
    dy, dx = (jnp.asarray(o, jnp.int32) for o in geometry.patch_offsets())
    k = geometry.DOWNSAMPLE
    pos_y = k * token_hw[..., 0:1] + dy  # [B, S, 4]
    pos_x = k * token_hw[..., 1:2] + dx
    patch = rope.apply_rope_2d_vision(patch.astype(jnp.float32), pos_x, pos_y,
                                      cfg.rope_theta_vision).astype(dt)
    b, s = patch.shape[:2]
    patch = patch.reshape(b, s, geometry.PATCHES_PER_TOKEN * cfg.vision_hidden)
    out = nn.Dense(cfg.hidden_size, dtype=dt, param_dtype=pdt,
                   kernel_init=kinit(("vision_in", "embed")), bias_init=binit(("embed",)),
                   name="dense_embedding")(patch)
    return nn.with_logical_constraint(out, ("batch", "length", "embed"))
