"""The block-sparse mixed-mask kernel: public entry points, one per input form.

The mask (docs/design.md §1.4): causal across the packed sequence, bidirectional inside an
image / video frame, nothing across packed samples; in the interval form of
``ops/block_ranges.py`` query ``i`` sees key ``j`` iff ``start_i <= j <= limit_i``.

* ``flash_mixed_attention``: from segment and visual-unit ids (what the model has).
* ``flash_mixed_attention_bounds``: from per-row key intervals; the query rows may
  be any ``Sq`` consecutive rows against ``Sk`` keys (a context-parallel shard).

Both run the kernels that ``ops/backend.kernel_backend`` names for the platform:
the Mosaic kernels (``flash_mixed_tpu``) on TPU, the Triton kernels
(``flash_mixed_gpu``) on GPU, the Mosaic kernels interpreted elsewhere. Sharding is
the caller's: ``ops/attention.py`` wraps these under ``shard_map``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from neo_jax.ops import backend, flash_common, flash_mixed_gpu, flash_mixed_tpu
from neo_jax.ops import block_ranges as br


def flash_mixed_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          segment_ids: jax.Array, unit_ids: jax.Array, *,
                          scale: float, block_q: int = 512, block_kv: int = 512,
                          block_q_bwd: int | None = None,
                          block_kv_bwd: int | None = None,
                          residual_names: tuple[str, str] = flash_common.DEFAULT_RESIDUAL_NAMES,
                          interpret: bool | None = None,
                          platform: str | None = None,
                          max_sample_tokens: int = 0) -> jax.Array:
  """Mixed-mask attention with the block-sparse Pallas kernel (differentiable).

  Same contract as ``ops.reference.reference_attention``.

  Args:
    q: ``[B, S, Hq, Dqk]`` queries (float32 or bfloat16).
    k: ``[B, S, Hkv, Dqk]`` keys, ``Hq % Hkv == 0``; query head ``h`` uses kv head
      ``h // (Hq // Hkv)``.
    v: ``[B, S, Hkv, Dv]`` values (``Dv`` may differ from ``Dqk``).
    segment_ids: ``[B, S] int32`` packed-sample ids, each id one contiguous run,
      padding (0) last.
    unit_ids: ``[B, S] int32`` visual-unit ids (0 = non-visual), contiguous runs.
    scale: score multiplier (NEO: ``head_dim ** -0.5``, docs/design.md §1.2).
    block_q, block_kv: forward block sizes in tokens (TPU: multiples of 8 and 128;
      ``S`` is padded inside to a multiple of all block sizes).
    block_q_bwd, block_kv_bwd: backward block sizes (default: the forward ones).
    residual_names: ``jax.checkpoint`` names given to the saved output and
      logsumexp (``save_only_these_names`` policies can keep or drop them).
    interpret: True runs the Mosaic kernels in interpret mode, False compiles them
      (AOT for TPU from a CPU host); None lets ``backend.kernel_backend`` choose.
    platform: the target platform for that choice (default: the mesh in context's,
      else the default backend).
    max_sample_tokens: the longest packed sample [tokens] the batch can hold (the
      packer's cap, ``model.max_sample_tokens``); 0 = no cap. Sizes the Mosaic kernels'
      block schedules (``block_ranges.pair_bound``); a batch that breaks the cap gets NaN
      outputs, never silently dropped blocks.

  Returns:
    ``[B, S, Hq, Dv]`` in ``q.dtype``; scores and softmax in float32.

  Raises:
    ValueError: incompatible shapes or non-positive block sizes.
  """
  b, s = q.shape[:2]
  if k.shape[:2] != (b, s) or segment_ids.shape != (b, s) or unit_ids.shape != (b, s):
    raise ValueError(f"Incompatible shapes q{q.shape} k{k.shape} v{v.shape} "
                     f"segment_ids{segment_ids.shape} unit_ids{unit_ids.shape}.")
  bounds = br.token_bounds(segment_ids.astype(jnp.int32), unit_ids.astype(jnp.int32))
  return flash_mixed_attention_bounds(
      q, k, v, bounds, scale=scale, block_q=block_q, block_kv=block_kv,
      block_q_bwd=block_q_bwd, block_kv_bwd=block_kv_bwd,
      residual_names=residual_names, interpret=interpret, platform=platform,
      max_sample_tokens=max_sample_tokens)


def flash_mixed_attention_bounds(q: jax.Array, k: jax.Array, v: jax.Array,
                                 bounds: br.TokenBounds, *, scale: float,
                                 block_q: int = 512, block_kv: int = 512,
                                 block_q_bwd: int | None = None,
                                 block_kv_bwd: int | None = None,
                                 residual_names: tuple[str, str] = (
                                     flash_common.DEFAULT_RESIDUAL_NAMES),
                                 interpret: bool | None = None,
                                 platform: str | None = None,
                                 max_sample_tokens: int = 0) -> jax.Array:
  """The kernel on query rows given by their visible key intervals (differentiable).

  The general form behind ``flash_mixed_attention``: query row ``i`` sees keys
  ``bounds.start[i] <= j <= bounds.limit[i]`` (``block_ranges.token_bounds``). The
  query rows may be any ``Sq`` consecutive rows of the sequence whose ``Sk`` keys are
  given, which is how a context-parallel shard runs it (its rows against the
  all-gathered keys; ``attention.context_parallel_flash_mixed_attention``).

  Args:
    q: ``[B, Sq, Hq, Dqk]`` queries (float32 or bfloat16).
    k: ``[B, Sk, Hkv, Dqk]`` keys, ``Hq % Hkv == 0``.
    v: ``[B, Sk, Hkv, Dv]`` values.
    bounds: ``TokenBounds`` of ``[B, Sq] int32`` key positions in ``[0, Sk)``, each
      row's ``start <= limit``, both non-decreasing along the rows (true of
      consecutive rows of one packed sequence).
    scale, block_q, block_kv, block_q_bwd, block_kv_bwd, residual_names, interpret,
      platform, max_sample_tokens: as ``flash_mixed_attention``. Rows are padded to a multiple of the
      q blocks, keys to a multiple of the kv blocks. The Triton kernels cap the
      block sizes at 64 (shared memory).

  Returns:
    ``[B, Sq, Hq, Dv]`` in ``q.dtype``.

  Raises:
    ValueError: incompatible shapes, non-positive block sizes, block sizes the
      chosen backend cannot tile (``flash_mixed_tpu.check_blocks``,
      ``flash_mixed_gpu.check_triton_config``), each naming the field.
  """
  flash_common.check_shapes(q, k, v, bounds)
  block_q_bwd = block_q_bwd or block_q
  block_kv_bwd = block_kv_bwd or block_kv
  blocks = (block_q, block_kv, block_q_bwd, block_kv_bwd)
  if min(blocks) <= 0:
    raise ValueError(f"Block sizes must be positive, got {blocks}.")
  kernels = backend.kernel_backend(platform, interpret)
  if kernels == "triton":
    # Triton blocks live in shared memory: the TPU-sized defaults are capped at 64.
    return flash_mixed_gpu.flash_mixed_attention_gpu_bounds(
        q, k, v, bounds, scale=scale, block_q=min(block_q, 64), block_kv=min(block_kv, 64),
        block_q_bwd=min(block_q_bwd, 64), block_kv_bwd=min(block_kv_bwd, 64),
        residual_names=residual_names)
  if kernels == "mosaic":
    flash_mixed_tpu.check_blocks(block_q, block_kv, block_q_bwd, block_kv_bwd)
  cfg = flash_common.Config(float(scale), block_q, block_kv, block_q_bwd, block_kv_bwd,
                            q.shape[2] // k.shape[2], kernels == "interpret",
                            tuple(residual_names), int(max_sample_tokens),
                            q.shape[1] == k.shape[1])
  return flash_mixed_tpu.flash_mixed_attention_tpu_bounds(q, k, v, bounds, cfg)
