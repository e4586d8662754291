"""Model FLOPs per token and MFU (the PaLM / MaxText convention).

Training FLOPs = 3 x forward (forward + backward w.r.t. activations and
weights). Forward matmul FLOPs per token = 2 x (multiply-adds of every weight
matrix), attention FLOPs per token from the average number of visible keys.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections


def layer_matmul_params(c: ml_collections.ConfigDict) -> int:
  """Weights of one native primitive used in matmuls (norms excluded)."""
  d, hq, hkv, D, inter = c.head_dim, c.num_heads, c.num_kv_heads, c.hidden_size, c.intermediate_size
  attn = D * hq * d * 2 + D * hkv * d * 3 + hq * d * D  # q, q_hw, k, k_hw, v, o
  return attn + 3 * D * inter


def train_flops_per_token(c: ml_collections.ConfigDict, *, avg_visible_keys: float,
                          head_fraction: float = 1.0, visual_fraction: float = 0.0) -> float:
  """Model FLOPs of one training token.

  Args:
    c: model config.
    avg_visible_keys: mean number of keys a query attends (S / 2 for one
      causal sequence; smaller for packed samples).
    head_fraction: fraction of tokens that go through the LM head (supervised
      fraction when the head is applied to gathered positions only).
    visual_fraction: fraction of tokens that are visual (patch embedder cost).
  """
  layers = c.num_prebuffer_layers + c.num_llm_layers
  fwd = 2 * layers * layer_matmul_params(c)
  # QK^T on 2 * head_dim wide vectors and PV on head_dim, per visible key.
  fwd += layers * 2 * c.num_heads * avg_visible_keys * (2 * c.head_dim + c.head_dim)
  fwd += 2 * c.hidden_size * c.vocab_size * head_fraction
  patch = 4 * 3 * c.patch_size ** 2 * c.vision_hidden + 4 * c.vision_hidden * c.hidden_size
  fwd += 2 * patch * visual_fraction
  return 3.0 * fwd


def measure_peak_flops(dtype: str = "bfloat16", n: int = 2048, reps: int = 5) -> float:
  """Measured matmul FLOP/s of one local device (used when the config gives none)."""
  dev = jax.local_devices()[0]
  a = jax.device_put(jnp.ones((n, n), dtype), dev)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(reps):
    out = f(a)
  out.block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - t0)
