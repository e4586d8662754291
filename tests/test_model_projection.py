"""model/projection.py: the projections' hand-written backward against autodiff (float64),
and its kernel holder against ``nn.DenseGeneral`` (same initial values, same outputs)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neo_jax.model import layers, projection


@pytest.mark.parametrize("n_in,x_shape,outs", [
    (1, (2, 7, 6), [(3, 4), (2, 4), (5,)]),     # q / k / v-like: [B, S, D] -> [B, S, H, d]
    (2, (2, 7, 3, 4), [(6,)]),                  # o_proj-like: [B, S, H, d] -> [B, S, D]
])
def test_gradients_equal_autodiff_in_float64(n_in, x_shape, outs):
  with jax.enable_x64(True):
    rng = np.random.default_rng(n_in)
    x = jnp.asarray(rng.normal(size=x_shape))
    ws = tuple(jnp.asarray(rng.normal(size=x_shape[len(x_shape) - n_in:] + o)) for o in outs)
    cts = [jnp.asarray(rng.normal(size=x_shape[:len(x_shape) - n_in] + o)) for o in outs]
    loss = lambda fn: lambda x, ws: sum(jnp.sum(y * c) for y, c in zip(fn(x, ws), cts))
    plain = lambda x, ws: tuple(jnp.tensordot(x, w, axes=n_in) for w in ws)
    ours = lambda x, ws: projection.project(x, ws, n_in)
    for a, b in zip(ours(x, ws), plain(x, ws)):
      np.testing.assert_allclose(a, b, rtol=1e-12)
    got = jax.grad(loss(ours), argnums=(0, 1))(x, ws)
    want = jax.grad(loss(plain), argnums=(0, 1))(x, ws)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
      assert a.shape == b.shape
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)


class _Old(nn.Module):
  in_axes: tuple
  features: tuple
  axes: tuple

  @nn.compact
  def __call__(self, x):
    return nn.DenseGeneral(self.features, axis=self.in_axes, use_bias=False,
                           kernel_init=layers.normal_init(0.3, self.axes), name="p")(x)


class _New(nn.Module):
  in_shape: tuple
  features: tuple
  axes: tuple

  @nn.compact
  def __call__(self, x):
    w = projection.ProjKernel(self.in_shape, self.features, layers.normal_init(0.3, self.axes),
                              name="p")()
    return projection.project(x, (w,), len(self.in_shape))[0]


@pytest.mark.parametrize("x_shape,in_axes,features,axes", [
    ((2, 5, 8), -1, (4, 6), ("embed", "heads", "head_dim")),
    ((2, 5, 4, 6), (-2, -1), (8,), ("heads", "head_dim", "embed")),
])
def test_kernel_initialises_and_applies_like_dense_general(x_shape, in_axes, features, axes):
  x = jnp.asarray(np.random.default_rng(1).normal(size=x_shape), jnp.float32)
  n_in = 1 if in_axes == -1 else 2
  old = _Old(in_axes if isinstance(in_axes, tuple) else (in_axes,), features, axes)
  new = _New(x_shape[len(x_shape) - n_in:], features, axes)
  p_old = old.init(jax.random.PRNGKey(4), x)["params"]
  p_new = new.init(jax.random.PRNGKey(4), x)["params"]
  assert p_old["p"]["kernel"].names == p_new["p"]["kernel"].names == axes
  np.testing.assert_array_equal(nn.meta.unbox(p_old)["p"]["kernel"],
                                nn.meta.unbox(p_new)["p"]["kernel"])
  np.testing.assert_allclose(old.apply({"params": p_old}, x), new.apply({"params": p_new}, x),
                             rtol=1e-6, atol=1e-6)


def test_mismatched_kernel_raises():
  with pytest.raises(ValueError, match="does not contract"):
    projection.project(jnp.zeros((2, 3)), (jnp.zeros((4, 5)),))
