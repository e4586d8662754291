"""The native primitive: a Qwen3 decoder layer with three-branch T/H/W attention.

docs/design.md §1.2 (NEO paper §3.1; release ``modeling_qwen3.py``): the T branch is
Qwen3's attention (``q_proj``, ``k_proj``, per-head ``q_norm`` / ``k_norm``, RoPE
base ``rope_theta`` on t); ``q_proj_hw`` / ``k_proj_hw`` add H and W branches
(first / last ``head_dim / 2`` channels of each head, their own RMSNorms, RoPE
base ``rope_theta_hw`` on h / w). Scores sum the three branches, which is
attention over ``[T | H | W]`` of width ``2 * head_dim`` with the scale
``head_dim ** -0.5``. Values and ``o_proj`` are Qwen3's.

Parameters carry logical axis names (``embed``, ``heads``, ``kv_heads``,
``head_dim``, ``mlp``) and activations are constrained to
(``batch``, ``length``, ...), so sharding is a table of rules (train/sharding.py).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from neo_jax.model import projection
from neo_jax.model import rope
from neo_jax.model import swiglu as swiglu_lib
from neo_jax.model.model_config import ModelConfig
from neo_jax.ops import attention as attention_ops
from neo_jax.ops import reference as reference_ops

CACHE_MODES = ("none", "prefill", "decode")

Array = jax.Array


def dtype_of(name: str) -> Any:
  """Maps a config dtype name ("bfloat16", "float32", ...) to a jnp dtype."""
  return jnp.dtype(name)


class _LogicalPartitioned(nn.LogicallyPartitioned):
  """``nn.LogicallyPartitioned`` that skips the sharding constraint on a value
  whose rank differs from its names: ``nn.DenseGeneral`` initialises a
  multi-axis kernel flattened to 2D and unboxes it before reshaping, which with
  a mesh in context (the train step) fails in ``with_sharding_constraint``."""

  def unbox(self, apply_constraint=True):
    return super().unbox(apply_constraint and jnp.ndim(self.value) == len(self.names))


def normal_init(std: float, axes: tuple[str, ...]):
  """N(0, std) initialiser with logical axis names attached."""
  init = nn.initializers.normal(stddev=std)
  return lambda *args, **kwargs: _LogicalPartitioned(init(*args, **kwargs), axes)


class RMSNorm(nn.Module):
  """Qwen3 RMSNorm: ``w * (x / sqrt(mean(x^2) + eps))`` over the last axis.

  The normalisation runs in float32, the result is cast to the input dtype
  before the weight multiply (as ``Qwen3RMSNorm``). Parameter ``scale [dim]``
  (PyTorch ``weight``), initialised to ones.

  The leading axes are merged into one for the arithmetic (``[N, dim]``): XLA:CPU's
  fused reductions over ``[1, T, dim]`` (batch 1, one packed row per device) ran 25-90x
  slower than the same reductions over ``[T, dim]`` (the scale gradient's sum over
  tokens, the row sums), 15% of the benchmark step (BUILD_NOTES.md §0l). Merging
  leading axes is a free reshape on every backend.
  """
  eps: float
  axis_name: str
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                       (x.shape[-1],), self.param_dtype)
    xf = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (scale.astype(x.dtype) * y.astype(x.dtype)).reshape(x.shape)


def _kernel(cfg, name, in_shape, out_shape, axes):
  """A projection's ``kernel`` (``nn.DenseGeneral``'s name, shape, initialiser, axes)."""
  return projection.ProjKernel(in_shape, out_shape, normal_init(cfg.init_std, axes),
                               dtype_of(cfg.param_dtype), name=name)()


class _Kernel(nn.Module):
  """A bias-free projection's ``kernel`` parameter alone (the ``nn.DenseGeneral``
  parameter of the same name, shape, initialiser and logical axes), for layers that
  do their own matmuls (``MLP``)."""
  shape: tuple[int, ...]
  axes: tuple[str, ...]
  config: ModelConfig

  @nn.compact
  def __call__(self) -> Array:
    return self.param("kernel", normal_init(self.config.init_std, self.axes), self.shape,
                      dtype_of(self.config.param_dtype))


def _constrain_cache(x: Array) -> Array:
  """The cache laid out like the keys: batch, positions, kv heads, width."""
  return nn.with_logical_constraint(x, ("batch", "length", "kv_heads", "head_dim"))


class NativeAttention(nn.Module):
  """Three-branch (T/H/W) attention with Native-RoPE and the mixed mask.

  Inputs: ``x [B, S, D]``, ``positions [B, S, 3] int32`` (t, h, w),
  ``segment_ids [B, S]``, ``unit_ids [B, S]``. Output ``[B, S, D]``.
  Parameters: ``q_proj [D, Hq, d]``, ``q_proj_hw [D, Hq, d]``,
  ``k_proj`` / ``k_proj_hw`` / ``v_proj [D, Hkv, d]``, ``o_proj [Hq, d, D]``,
  ``q_norm`` / ``k_norm [d]``, ``q_norm_h`` / ``q_norm_w`` / ``k_norm_h`` /
  ``k_norm_w [d / 2]``.

  KV cache (``cache_mode``; the ``"cache"`` collection, made by
  ``infer/kv_cache.init_cache``): ``key [B, L, Hkv, 2d]`` (after the norms and
  Native-RoPE) and ``value [B, L, Hkv, d]``. ``"prefill"`` attends as in training and
  writes the ``S`` keys / values at cache positions ``[0, S)``; ``"decode"`` takes
  one token per row (``S = 1``), writes it at ``cache_index [B]`` and attends to the
  row's cache positions ``<= cache_index``.
  """
  config: ModelConfig
  cache_mode: str = "none"

  def _cache(self):
    def missing():
      raise ValueError("No KV cache given: apply with the 'cache' collection from "
                       "neo_jax.infer.kv_cache.init_cache and mutable=['cache'].")
    return self.variable("cache", "key", missing), self.variable("cache", "value", missing)

  @nn.compact
  def __call__(self, x: Array, positions: Array, segment_ids: Array, unit_ids: Array,
               cache_index: Array | None = None) -> Array:
    cfg = self.config
    hq, hkv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    pdt = dtype_of(cfg.param_dtype)
    norm = lambda name, axis: RMSNorm(cfg.rms_norm_eps, axis, pdt, name=name)
    t, h, w = positions[..., 0], positions[..., 1], positions[..., 2]

    # The five input projections share one hand-written backward (model/projection.py).
    dt = dtype_of(cfg.dtype)
    q_axes, kv_axes = ("embed", "heads", "head_dim"), ("embed", "kv_heads", "head_dim")
    kernels = [_kernel(cfg, name, (x.shape[-1],), shape, axes) for name, shape, axes in (
        ("q_proj", (hq, d), q_axes), ("k_proj", (hkv, d), kv_axes),
        ("v_proj", (hkv, d), kv_axes), ("q_proj_hw", (hq, d), q_axes),
        ("k_proj_hw", (hkv, d), kv_axes))]
    q, k, v, q_hw, k_hw = projection.project(x.astype(dt), tuple(w.astype(dt) for w in kernels))

    half = d // 2
    q_h = rope.apply_rope_half(norm("q_norm_h", "head_dim")(q_hw[..., :half]), h, cfg.rope_theta_hw)
    q_w = rope.apply_rope_half(norm("q_norm_w", "head_dim")(q_hw[..., half:]), w, cfg.rope_theta_hw)
    k_h = rope.apply_rope_half(norm("k_norm_h", "head_dim")(k_hw[..., :half]), h, cfg.rope_theta_hw)
    k_w = rope.apply_rope_half(norm("k_norm_w", "head_dim")(k_hw[..., half:]), w, cfg.rope_theta_hw)
    if cfg.rope_mode == "mrope":
      # Qwen2-VL's mRoPE on the T branch; the H / W branches are off (zero scores).
      q = rope.apply_mrope_half(norm("q_norm", "head_dim")(q), positions, cfg.rope_theta)
      k = rope.apply_mrope_half(norm("k_norm", "head_dim")(k), positions, cfg.rope_theta)
      q_h, q_w = q_h * 0, q_w * 0
    else:
      q = rope.apply_rope_half(norm("q_norm", "head_dim")(q), t, cfg.rope_theta)
      k = rope.apply_rope_half(norm("k_norm", "head_dim")(k), t, cfg.rope_theta)

    q = jnp.concatenate([q, q_h, q_w], axis=-1)  # [B, S, Hq, 2d]
    k = jnp.concatenate([k, k_h, k_w], axis=-1)  # [B, S, Hkv, 2d]
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
    k = nn.with_logical_constraint(k, ("batch", "length", "kv_heads", "head_dim"))
    v = nn.with_logical_constraint(v, ("batch", "length", "kv_heads", "head_dim"))
    q, k, v = (checkpoint_name(q, "query_proj"), checkpoint_name(k, "key_proj"),
               checkpoint_name(v, "value_proj"))

    if self.cache_mode == "decode":
      ck, cv = self._cache()
      write = jax.vmap(lambda c, u, i: jax.lax.dynamic_update_slice_in_dim(c, u, i, axis=0))
      ck.value = _constrain_cache(write(ck.value, k.astype(ck.value.dtype), cache_index))
      cv.value = _constrain_cache(write(cv.value, v.astype(cv.value.dtype), cache_index))
      visible = jnp.arange(ck.value.shape[1])[None, None, :] <= cache_index[:, None, None]
      out = reference_ops.masked_attention(q, ck.value.astype(q.dtype), cv.value.astype(v.dtype),
                                           visible, scale=d ** -0.5)
    else:
      out = attention_ops.attention(
          q, k, v, segment_ids, unit_ids, scale=d ** -0.5, impl=cfg.attention_impl,
          block_q=cfg.attention_block_q, block_kv=cfg.attention_block_kv,
          max_sample_tokens=cfg.max_sample_tokens)
      if self.cache_mode == "prefill":
        ck, cv = self._cache()
        ck.value = _constrain_cache(
            jax.lax.dynamic_update_slice_in_dim(ck.value, k.astype(ck.value.dtype), 0, 1))
        cv.value = _constrain_cache(
            jax.lax.dynamic_update_slice_in_dim(cv.value, v.astype(cv.value.dtype), 0, 1))
    out = checkpoint_name(out, "attention_out")
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "head_dim"))
    w_o = _kernel(cfg, "o_proj", (hq, d), (cfg.hidden_size,), ("heads", "head_dim", "embed"))
    (y,) = projection.project(out.astype(dt), (w_o.astype(dt),), n_in=2)
    return checkpoint_name(y, "out_proj")


class MLP(nn.Module):
  """SwiGLU MLP: ``down_proj(silu(gate_proj(x)) * up_proj(x))``; ``[B, S, D] -> [B, S, D]``.

  Parameters ``gate_proj`` / ``up_proj`` ``kernel [D, F]``, ``down_proj`` ``kernel [F, D]``
  (as ``nn.DenseGeneral`` names them); the matmuls and their backward are
  ``model/swiglu.py``'s.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    d, f, dt = cfg.hidden_size, cfg.intermediate_size, dtype_of(cfg.dtype)
    w_gate = _Kernel((d, f), ("embed", "mlp"), cfg, name="gate_proj")()
    w_up = _Kernel((d, f), ("embed", "mlp"), cfg, name="up_proj")()
    w_down = _Kernel((f, d), ("mlp", "embed"), cfg, name="down_proj")()
    y = swiglu_lib.swiglu(x.astype(dt), w_gate.astype(dt), w_up.astype(dt), w_down.astype(dt))
    return checkpoint_name(y, "mlp_out")


class DecoderLayer(nn.Module):
  """One native primitive (pre-norm residual block), written for ``nn.scan``.

  ``__call__(x, positions, segment_ids, unit_ids, cache_index) -> (x, None)`` with
  ``x [B, S, D]`` in the compute dtype (``cache_index``: see ``NativeAttention``).
  """
  config: ModelConfig
  cache_mode: str = "none"

  @nn.compact
  def __call__(self, x: Array, positions: Array, segment_ids: Array, unit_ids: Array,
               cache_index: Array):
    cfg = self.config
    pdt = dtype_of(cfg.param_dtype)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    h = RMSNorm(cfg.rms_norm_eps, "embed", pdt, name="input_layernorm")(x)
    x = x + NativeAttention(cfg, self.cache_mode, name="self_attn")(
        h, positions, segment_ids, unit_ids, cache_index)
    h = RMSNorm(cfg.rms_norm_eps, "embed", pdt, name="post_attention_layernorm")(x)
    x = x + MLP(cfg, name="mlp")(h)
    return nn.with_logical_constraint(x, ("batch", "length", "embed")), None


# What each ``model.remat_policy`` saves; the names are ``model_config.REMAT_POLICIES``
# ("none" = no remat, ``DecoderStack``), checked in tests/test_model_config.py.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "minimal": jax.checkpoint_policies.save_only_these_names(
        "query_proj", "key_proj", "value_proj", "attention_out", "out_proj",
        "mlp_gate", "mlp_up", "mlp_out"),
    # minimal + the attention kernel's residuals (its output and row logsumexp, names
    # from ops/flash_common.py): the backward then never re-runs the attention forward.
    "minimal_flash": jax.checkpoint_policies.save_only_these_names(
        "query_proj", "key_proj", "value_proj", "attention_out", "out_proj",
        "mlp_gate", "mlp_up", "mlp_out", "flash_mixed_out", "flash_mixed_lse"),
    "save_qkv_attn": jax.checkpoint_policies.save_only_these_names(
        "query_proj", "key_proj", "value_proj", "attention_out"),
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class DecoderStack(nn.Module):
  """``num_layers`` DecoderLayers under ``nn.scan`` (parameters stacked on axis 0,
  logical axis ``layers``), each wrapped in ``nn.remat`` with the config's
  policy (``none`` = no remat). ``[B, S, D] -> [B, S, D]``. With a ``cache_mode``
  the ``"cache"`` collection is scanned too (leading axis = layer).

  ``unrolled=True`` (cached inference on XLA:CPU, ``infer/decode.py``): the layers
  are a Python loop over submodules ``layers_0 ... layers_{n-1}``, each with its
  own parameter (and cache) subtree, ``unrolled_layer_params`` of the stacked ones.
  XLA:CPU copies a layer's weights out of the stacked arrays at every iteration of
  the scan; separate buffers are read in place."""
  config: ModelConfig
  num_layers: int
  cache_mode: str = "none"
  unrolled: bool = False

  @nn.compact
  def __call__(self, x: Array, positions: Array, segment_ids: Array, unit_ids: Array,
               cache_index: Array | None = None) -> Array:
    cfg = self.config
    if cache_index is None:
      cache_index = jnp.zeros(x.shape[:1], jnp.int32)
    layer_cls = DecoderLayer
    if cfg.remat_policy != "none" and self.cache_mode == "none":
      layer_cls = nn.remat(DecoderLayer, policy=REMAT_POLICIES[cfg.remat_policy],
                           prevent_cse=False)
    if self.unrolled:
      for i in range(self.num_layers):
        x, _ = layer_cls(cfg, self.cache_mode, name=f"layers_{i}")(
            x, positions, segment_ids, unit_ids, cache_index)
      return x
    scanned = nn.scan(
        layer_cls, variable_axes={"params": 0, "cache": 0}, split_rngs={"params": True},
        in_axes=(nn.broadcast,) * 4, length=self.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = scanned(cfg, self.cache_mode, name="layers")(x, positions, segment_ids, unit_ids,
                                                      cache_index)
    return x


def unrolled_layer_params(params: dict, stack_layers: dict[str, int]) -> dict:
  """Each decoder stack's layer subtree as ``DecoderStack(unrolled=True)`` reads it.

  Args:
    params: a variable collection with the stacks' scanned layers
      (``params[stack]["layers"]``, leaves ``[n, ...]``): the parameters, or the
      ``"cache"`` collection (``infer/kv_cache.py``), which has the same layout.
    stack_layers: ``{stack: n}`` (``ModelConfig.stack_layers``).

  Returns:
    ``{stack: {"layers_0": ..., ..., "layers_{n-1}": ...}}``: leaf ``[i]`` of every
    stacked leaf (a copy; the other parameters are not included).

  Raises:
    KeyError: a stack without scanned layers.
  """
  return {stack: {f"layers_{i}": jax.tree_util.tree_map(lambda a, i=i: a[i],
                                                       params[stack]["layers"])
                  for i in range(n)}
          for stack, n in stack_layers.items()}
