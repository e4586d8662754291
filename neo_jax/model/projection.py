"""Bias-free projections of one input with a hand-written backward (the attention's).

``project(x, kernels, n_in)`` is ``tuple(tensordot(x, w, n_in) for w in kernels)``:
the last ``n_in`` axes of ``x`` contracted with the first ``n_in`` of each kernel, as
``nn.DenseGeneral`` without bias computes it (same ``dot_general``, same values).
The backward, for ``N`` rows of ``x`` flattened to ``[N, K]``:

    d W_i = x^T @ d y_i        x^T an explicit ``[K, N]`` transpose, made once
    d x   = sum_i d y_i @ W_i^T

so XLA gets row-major GEMMs whose large operand (``d y_i``, ``[N, out_i]``) is read as
it is produced. Autodiff of ``DenseGeneral`` let XLA's CPU backend write each ``d y_i``
(the RMSNorm / RoPE backward fused in) as a transposed ``[out_i, N]`` copy for the
weight-gradient GEMM, five per attention layer plus one for ``o_proj``, the pattern
``model/swiglu.py`` removed from the MLP (BUILD_NOTES §0g, issue 28). The residuals are
``x`` and the kernels, as autodiff keeps.

``ProjKernel`` holds such a kernel under the ``DenseGeneral`` parameter name
``kernel``, initialised exactly as ``DenseGeneral`` does (the initialiser drawn on the
flattened ``[prod(in), prod(out)]`` shape, then reshaped), so parameter trees,
initial values and checkpoints do not change.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
from flax.core import meta
import jax
import jax.numpy as jnp


class ProjKernel(nn.Module):
  """A bias-free ``nn.DenseGeneral`` kernel alone: ``kernel`` of ``in_shape + out_shape``.

  Attributes:
    in_shape, out_shape: contracted and produced axes' sizes.
    kernel_init: initialiser (may return ``nn.LogicallyPartitioned``); called on the
      flattened shape like ``DenseGeneral``'s.
    param_dtype: stored dtype.
  """
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  kernel_init: Callable[..., Any]
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self) -> jax.Array:
    shape = tuple(self.in_shape) + tuple(self.out_shape)

    def init(rng, shape, dtype=jnp.float32):
      flat = (math.prod(self.in_shape), math.prod(self.out_shape))
      kernel = self.kernel_init(rng, flat, dtype)
      if isinstance(kernel, meta.AxisMetadata):
        return meta.replace_boxed(kernel, jnp.reshape(kernel.unbox(), shape))
      return jnp.reshape(kernel, shape)

    return self.param("kernel", init, shape, self.param_dtype)


def project(x: jax.Array, kernels: tuple[jax.Array, ...], n_in: int = 1) -> tuple[jax.Array, ...]:
  """Projections of ``x`` by each kernel (differentiable, hand-written backward).

  Args:
    x: ``[..., *in]`` with ``n_in`` contracted trailing axes.
    kernels: ``[*in, *out_i]`` each, in ``x.dtype`` (the caller casts, as
      ``DenseGeneral``'s ``promote_dtype``).
    n_in: number of contracted axes.

  Returns:
    ``[..., *out_i]`` per kernel, in ``x.dtype``.

  Raises:
    ValueError: a kernel whose leading axes are not ``x``'s trailing ones.
  """
  for w in kernels:
    if w.shape[:n_in] != x.shape[x.ndim - n_in:]:
      raise ValueError(f"Kernel {w.shape} does not contract the last {n_in} axes of "
                       f"{x.shape}.")
  return _project(n_in, x, tuple(kernels))


def _forward(n_in, x, kernels):
  return tuple(jnp.tensordot(x, w, axes=n_in) for w in kernels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _project(n_in, x, kernels):
  return _forward(n_in, x, kernels)


def _fwd(n_in, x, kernels):
  return _forward(n_in, x, kernels), (x, kernels)


def _bwd(n_in, res, dys):
  x, kernels = res
  k = math.prod(x.shape[x.ndim - n_in:])
  x2 = x.reshape(-1, k)
  x_t = x2.T                                                    # [K, N], once
  dws, dx = [], None
  for w, dy in zip(kernels, dys):
    dy2 = dy.reshape(x2.shape[0], -1)                           # [N, out]
    w2 = w.reshape(k, -1)                                       # [K, out]
    dws.append((x_t @ dy2).reshape(w.shape))
    term = jnp.einsum("no,ko->nk", dy2, w2)
    dx = term if dx is None else dx + term
  return dx.reshape(x.shape), tuple(dws)


_project.defvjp(_fwd, _bwd)
