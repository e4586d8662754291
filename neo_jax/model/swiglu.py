"""The SwiGLU MLP as one function with a hand-written backward (Qwen3's MLP).

    y = down(silu(x @ W_gate) * (x @ W_up)),   silu(g) = g * sigmoid(g)

Forward is what ``jax.grad`` would differentiate; the backward computes the same
gradients, written so that XLA gets plain row-major GEMMs: each weight gradient is
``A^T @ B`` with ``A^T`` an explicit transpose of the smaller operand (the MLP input
``[N, D]`` for the gate / up kernels, the output cotangent ``[N, D]`` for the down
kernel), and the SiLU backward is its own elementwise pass. Autodiff of the same
forward made XLA's CPU backend fuse the SiLU backward into a transposed ``[F, N]``
copy of the gate / up cotangents, which the step profile of issue 16's workload
showed as the largest non-matmul cost (about a third of the step); this form runs
the MLP's forward + backward 2.5x faster there (``bench/train_step.py``,
BUILD_NOTES §0g). The residuals are ``x``, the gate and up activations (named
``mlp_gate`` / ``mlp_up`` for the remat policies) and the weights, as autodiff
keeps.
"""

from __future__ import annotations

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp


def _constrain(a):
  """``[B, S, F]`` activations sharded like the ``mlp`` axis of the kernels."""
  return nn.with_logical_constraint(a, ("batch", "length", "mlp")) if a.ndim == 3 else a


def _forward(x, w_gate, w_up, w_down):
  gate = checkpoint_name(_constrain(jnp.einsum("...d,df->...f", x, w_gate)), "mlp_gate")
  up = checkpoint_name(_constrain(jnp.einsum("...d,df->...f", x, w_up)), "mlp_up")
  return jnp.einsum("...f,fd->...d", jax.nn.silu(gate) * up, w_down), gate, up


@jax.custom_vjp
def swiglu(x: jax.Array, w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array) -> jax.Array:
  """Qwen3's MLP ``down(silu(x W_gate) * (x W_up))`` (differentiable).

  Args:
    x: ``[..., D]`` input (the compute dtype).
    w_gate, w_up: ``[D, F]`` kernels; w_down: ``[F, D]``, all in ``x.dtype`` (the
      caller casts; matmuls accumulate and return in that dtype, as ``nn.Dense``).

  Returns:
    ``[..., D]`` in ``x.dtype``.
  """
  return _forward(x, w_gate, w_up, w_down)[0]


def _fwd(x, w_gate, w_up, w_down):
  y, gate, up = _forward(x, w_gate, w_up, w_down)
  return y, (x, gate, up, w_gate, w_up, w_down)


def _bwd(res, dy):
  x, gate, up, w_gate, w_up, w_down = res
  d, f = w_gate.shape
  sig = jax.nn.sigmoid(gate)
  silu = gate * sig
  dh = jnp.einsum("...d,fd->...f", dy, w_down)
  d_up = dh * silu
  d_gate = dh * up * (sig * (1 + gate * (1 - sig)))  # silu'(g) = s (1 + g (1 - s))
  x2, dy2 = x.reshape(-1, d), dy.reshape(-1, d)
  x_t = x2.T                                                   # [D, N]
  dw_gate = x_t @ d_gate.reshape(-1, f)
  dw_up = x_t @ d_up.reshape(-1, f)
  dw_down = (dy2.T @ (silu * up).reshape(-1, f)).T             # ([D, N] @ [N, F]).T
  dx = (jnp.einsum("...f,df->...d", d_gate, w_gate)
        + jnp.einsum("...f,df->...d", d_up, w_up))
  return dx, dw_gate, dw_up, dw_down


swiglu.defvjp(_fwd, _bwd)
