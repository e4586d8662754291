"""Model FLOPs and the peak they are measured against (MFU, the PaLM / MaxText convention).

Two counts:

* ``StepFlops``: the trainer's, exact for each batch. Per weight matrix of ``P``
  entries a token costs ``2P`` forward, ``2P`` for the activation gradient and
  ``2P`` for the weight gradient only when the matrix trains (a frozen matrix's
  gradient is never formed: ``optax.set_to_zero`` drops it and XLA removes it).
  Decoder matrices run at every real token, the patch embedder at visual tokens
  only (four 16x16 patches each), the LM head at the supervised predictions when
  ``max_supervised_tokens`` gathers them (else at every position). Attention
  costs ``2 * heads * (2d + d)`` per layer and visible (query, key) pair
  (``QK^T`` on the ``2d``-wide [T | H/W] vectors, ``PV`` on ``d``), forward, and
  twice that backward; the pairs are counted from the batch's segment and
  visual-unit ids (``attention_pairs``), padding excluded.
* ``train_flops_per_token``: the planning estimate of the AOT tool (every weight
  trains, an average number of visible keys).

Peaks: ``peak_flops_per_device`` reads a table of published dense peaks per chip
(``PEAK_FLOPS``); off that table (a CPU) it measures a matmul and says so.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from flax import traverse_util
import jax
import jax.numpy as jnp

from neo_jax.core import geometry
from neo_jax.model import shapes as model_shapes
from neo_jax.model.model_config import ModelConfig
from neo_jax.ops import block_ranges

# Dense peaks per device [FLOP/s] (bf16, fp32) from the vendors' data sheets. fp32:
# the rate of an fp32 matmul at JAX's default precision (TPU: bf16 passes; NVIDIA:
# TF32 tensor cores). Keys are matched against ``device_kind`` (lower case), first hit.
PEAK_FLOPS = (
    ("tpu v6", (918e12, 918e12)),      # v6e (Trillium)
    ("tpu v5 lite", (197e12, 197e12)),  # v5e
    ("tpu v5e", (197e12, 197e12)),
    ("tpu v5", (459e12, 459e12)),      # v5p
    ("tpu v4", (275e12, 275e12)),
    ("h200", (989e12, 494e12)),
    ("h100", (989e12, 494e12)),        # SXM
    ("a100", (312e12, 156e12)),
)


def peak_flops_per_device(dtype: str = "bfloat16", device: Any = None) -> tuple[float, str]:
  """(peak FLOP/s of one device for ``dtype`` matmuls, where the number comes from).

  The source is ``"table:<device kind>"`` for a known chip, else
  ``"measured:<platform>"``: a 2048^3 matmul timed on the device (a CPU's peak is
  what it reaches there, not a data sheet's).
  """
  device = device or jax.local_devices()[0]
  kind = getattr(device, "device_kind", "").lower()
  for key, (bf16, fp32) in PEAK_FLOPS:
    if key in kind:
      return (fp32 if dtype == "float32" else bf16), f"table:{device.device_kind}"
  return measure_peak_flops(dtype, device=device), f"measured:{device.platform}"


def measure_peak_flops(dtype: str = "bfloat16", n: int = 2048, reps: int = 5,
                       device: Any = None) -> float:
  """Measured matmul FLOP/s of one local device (the fallback off ``PEAK_FLOPS``)."""
  dev = device or jax.local_devices()[0]
  a = jax.device_put(jnp.ones((n, n), dtype), dev)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(reps):
    out = f(a)
  out.block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def attention_pairs(segment_ids: jax.Array, unit_ids: jax.Array) -> jax.Array:
  """Visible (query, key) pairs of a batch under the mixed mask, padding excluded.

  Args:
    segment_ids, unit_ids: ``[B, S] int32``.

  Returns:
    ``[] float32`` (an int32 overflows at pod batch sizes): ``sum over real
    queries of (limit - start + 1)`` (``block_ranges.token_bounds``).
  """
  tb = block_ranges.token_bounds(segment_ids, unit_ids)
  return jnp.sum(jnp.where(segment_ids > 0, tb.limit - tb.start + 1, 0).astype(jnp.float32))


class StepFlops:
  """Model FLOPs of a train step from the parameter shapes and the trainable mask.

  Args:
    model_cfg: the model config (a ``ModelConfig``; a model ``ConfigDict`` is converted).
    params: the (abstract) parameter tree (shapes only are read).
    trainable: a tree of bools like ``params`` (``optimizer.trainable_mask``).
  """

  def __init__(self, model_cfg: ModelConfig, params: Any, trainable: Any):
    model_cfg = ModelConfig.coerce(model_cfg)
    self.cfg = model_cfg
    flat = traverse_util.flatten_dict(params)
    train = traverse_util.flatten_dict(trainable)
    # [entries of trainable, entries of frozen] weight matrices, per group.
    self.groups = {"decoder": [0, 0], "vision": [0, 0], "head": [0, 0]}
    for path, leaf in flat.items():
      name = "/".join(path)
      if path[-1] not in ("kernel", "embedding") or leaf.ndim < 2:
        continue
      if path[0] in ("prebuffer", "llm"):
        group = "decoder"
      elif path[0] == "vision_model":
        group = "vision"
      elif re.match(r"^(lm_head/kernel|embed_tokens/embedding)$", name):
        if name.startswith("embed_tokens") and not model_cfg.tie_word_embeddings:
          continue  # an untied embedding is a lookup, not a matmul
        group = "head"
      else:
        continue
      # The patch embedder runs once per patch, PATCHES_PER_TOKEN times per visual token.
      n = leaf.size * (geometry.PATCHES_PER_TOKEN
                       if name == "vision_model/patch_embedding/kernel" else 1)
      self.groups[group][0 if train[path] else 1] += n
    self.attn_per_pair = 2 * model_cfg.num_layers * model_cfg.num_heads * 3 * model_cfg.head_dim

  def _matmul(self, group: str, rows: float) -> float:
    trainable, frozen = self.groups[group]
    return rows * (6 * trainable + 4 * frozen)

  def step(self, *, tokens: float, visual_tokens: float, head_rows: float,
           attention_pairs: float) -> float:
    """FLOPs of one train step (forward + backward) over the given counts."""
    return (self._matmul("decoder", tokens) + self._matmul("vision", visual_tokens)
            + self._matmul("head", head_rows) + 3 * self.attn_per_pair * attention_pairs)


def _kernel_size(shapes: dict, path: tuple[str, ...]) -> int:
  return math.prod(shapes[path])


def layer_matmul_params(c: ModelConfig) -> int:
  """Weights of one native primitive used in matmuls (norms excluded): the ``kernel``
  leaves of one layer of the model's parameters (``model/shapes.param_shapes``), i.e.
  ``q, q_hw, k, k_hw, v, o`` and the three MLP matrices."""
  shapes = model_shapes.param_shapes(ModelConfig.coerce(c))
  return sum(math.prod(s[1:]) for p, s in shapes.items()
             if p[0] == "llm" and p[-1] == "kernel")


def train_flops_per_token(c: ModelConfig, *, avg_visible_keys: float,
                          head_fraction: float = 1.0, visual_fraction: float = 0.0) -> float:
  """Planning estimate of the model FLOPs of one training token (every weight trains).

  Args:
    c: model config.
    avg_visible_keys: mean number of keys a query attends (S / 2 for one
      causal sequence; smaller for packed samples).
    head_fraction: fraction of tokens that go through the LM head (supervised
      fraction when the head is applied to gathered positions only).
    visual_fraction: fraction of tokens that are visual (patch embedder cost).
  """
  c = ModelConfig.coerce(c)
  shapes = model_shapes.param_shapes(c)
  layers = c.num_layers
  fwd = 2 * layers * layer_matmul_params(c)
  # QK^T on 2 * head_dim wide vectors and PV on head_dim, per visible key.
  fwd += layers * 2 * c.num_heads * avg_visible_keys * (2 * c.head_dim + c.head_dim)
  fwd += 2 * c.hidden_size * c.vocab_size * head_fraction
  patch = (geometry.PATCHES_PER_TOKEN
           * _kernel_size(shapes, ("vision_model", "patch_embedding", "kernel"))
           + _kernel_size(shapes, ("vision_model", "dense_embedding", "kernel")))
  fwd += 2 * patch * visual_fraction
  return 3.0 * fwd
