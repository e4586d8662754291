"""What the TPU (Mosaic) and GPU (Triton) mixed-mask kernels share.

* ``Config``: the static kernel configuration (block sizes, GQA group, scale).
* ``differentiable``: one ``jax.custom_vjp`` from a forward and a backward kernel
  call (FlashAttention-2, Dao 2023: residuals are the output and the row
  logsumexp; ``D_i = rowsum(dO * O)`` is computed in XLA).
* ``run_padded``: the ``[B, S, H, D]`` <-> ``[B, H, S, D]`` layout and the
  padding of rows and keys to whole blocks.
* ``check_shapes``: the shape contract of ``flash_mixed_attention_bounds``.

Neither kernel module imports the other; both import this one.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from neo_jax.ops import block_ranges as br

MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
DEFAULT_RESIDUAL_NAMES = ("flash_mixed_out", "flash_mixed_lse")


@dataclasses.dataclass(frozen=True)
class Config:
  """Static kernel configuration (hashable: a custom_vjp non-diff argument).

  Attributes:
    scale: score multiplier.
    block_q, block_kv: forward block sizes in tokens.
    block_q_bwd, block_kv_bwd: block sizes of the dQ and dK/dV kernels.
    group: query heads per kv head.
    interpret: run the Pallas kernels in interpret mode.
    residual_names: ``jax.checkpoint`` names of the saved output and logsumexp.
    max_sample_tokens: the longest packed sample [tokens] (0 = no cap); bounds the
      TPU kernels' schedules (``block_ranges.pair_bound``); the Triton kernels loop
      over each range and ignore it.
    whole_sequence: the query rows are all the key positions (``Sq == Sk``), so every
      real key's kv block is visited by its own row; False (a context shard) makes
      the TPU dK / dV zero the kv blocks the rows do not see.
    primal: set by ``differentiable`` on the forward of a call that is not
      differentiated (inference): no backward follows, so a forward may choose a
      form that would slow one down (``flash_blockwise``'s batched single block).
  """
  scale: float
  block_q: int
  block_kv: int
  block_q_bwd: int
  block_kv_bwd: int
  group: int
  interpret: bool
  residual_names: tuple[str, str]
  max_sample_tokens: int = 0
  whole_sequence: bool = True
  primal: bool = False


def differentiable(fwd_call, bwd_call):
  """``flash(cfg, q, k, v, start, limit)`` with a custom VJP made of kernel calls.

  Shared by the TPU kernels here and the Triton ones (``flash_mixed_gpu``). Residuals:
  q, k, v, start, limit, the output and the logsumexp (the last two under
  ``cfg.residual_names`` for ``jax.checkpoint`` policies); ``D_i = rowsum(dO * O)`` in
  XLA (Dao 2023, Alg. 2). Block ranges are computed for the forward and backward
  block sizes.

  Args:
    fwd_call: ``(cfg, q, k, v, start, limit, ranges) -> (o, lse)``; q ``[B, Hq, Sq, .]``,
      k / v ``[B, Hkv, Sk, .]``, start / limit ``[B, Sq] int32``.
    bwd_call: ``(cfg, q, k, v, do, lse, di, start, limit, ranges) -> (dq, dk, dv)``.

  Returns:
    The differentiable function (``cfg`` a static ``Config``).
  """
  @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
  def flash(cfg, q, k, v, start, limit):   # not differentiated: ``Config.primal``
    return fwd(dataclasses.replace(cfg, primal=True), q, k, v, start, limit)[0]

  def fwd(cfg, q, k, v, start, limit):
    r = br.block_ranges(br.TokenBounds(start, limit), cfg.block_q, cfg.block_kv,
                        kv_len=k.shape[2])
    o, lse = fwd_call(cfg, q, k, v, start, limit, r)
    o = checkpoint_name(o, cfg.residual_names[0])
    lse = checkpoint_name(lse, cfg.residual_names[1])
    return o, (q, k, v, start, limit, o, lse)

  def bwd(cfg, res, do):
    q, k, v, start, limit, o, lse = res
    r = br.block_ranges(br.TokenBounds(start, limit), cfg.block_q_bwd, cfg.block_kv_bwd,
                        kv_len=k.shape[2])
    di = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)
    dq, dk, dv = bwd_call(cfg, q, k, v, do, lse, di, start, limit, r)
    return dq, dk, dv, None, None

  flash.defvjp(fwd, bwd)
  return flash



def run_padded(flash, cfg: Config, q: jax.Array, k: jax.Array, v: jax.Array,
               bounds: br.TokenBounds, *, q_multiple: int, kv_multiple: int) -> jax.Array:
  """Runs ``flash`` (from ``differentiable``) in the kernels' layout.

  Transposes ``[B, S, H, D] -> [B, H, S, D]``, zero-pads the query rows to a multiple of
  ``q_multiple`` and the keys / values to one of ``kv_multiple``, pads the bounds by
  giving padded rows the last row's limit (``block_ranges.pad_bounds``: padded keys are
  never seen), and returns the real rows, ``[B, Sq, Hq, Dv]``. With a sample cap ``L``
  the kernels get ``max(L, P + 1)`` for ``P`` padded rows (a padded row sees a key up
  to ``P`` rows back: ``block_ranges.kv_step_bound``, one term of ``pair_bound``).
  """
  sq, sk = q.shape[1], k.shape[1]
  q_pad = -(-sq // q_multiple) * q_multiple
  k_pad = -(-sk // kv_multiple) * kv_multiple

  def layout(x, n):
    x = jnp.swapaxes(x, 1, 2)
    return jnp.pad(x, ((0, 0), (0, 0), (0, n - x.shape[2]), (0, 0))) if n > x.shape[2] else x

  if cfg.max_sample_tokens > 0:
    cfg = dataclasses.replace(cfg, max_sample_tokens=max(cfg.max_sample_tokens,
                                                         q_pad - sq + 1))
  tb = br.pad_bounds(br.TokenBounds(bounds.start.astype(jnp.int32),
                                    bounds.limit.astype(jnp.int32)), q_pad)
  o = flash(cfg, layout(q, q_pad), layout(k, k_pad), layout(v, k_pad), tb.start, tb.limit)
  return jnp.swapaxes(o[:, :, :sq], 1, 2)



def check_shapes(q: jax.Array, k: jax.Array, v: jax.Array, bounds: br.TokenBounds) -> None:
  """The shape contract of the kernels' bounds form.

  ``q [B, Sq, Hq, Dqk]``, ``k [B, Sk, Hkv, Dqk]``, ``v [B, Sk, Hkv, Dv]``,
  ``bounds.start / limit [B, Sq]``, ``Hq % Hkv == 0``.

  Raises:
    ValueError: any mismatch, naming every shape.
  """
  b, sq, hq, dqk = q.shape
  sk, hkv = k.shape[1], k.shape[2]
  if (hq % hkv or k.shape != (b, sk, hkv, dqk) or v.shape[:3] != (b, sk, hkv)
      or bounds.start.shape != (b, sq) or bounds.limit.shape != (b, sq)):
    raise ValueError(f"Incompatible shapes q{q.shape} k{k.shape} v{v.shape} "
                     f"bounds{bounds.start.shape}/{bounds.limit.shape}.")
