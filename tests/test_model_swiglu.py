"""model/swiglu.py's hand-written backward against autodiff of the plain formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neo_jax.model import swiglu as swiglu_lib


def _plain(x, wg, wu, wd):
  g, u = x @ wg, x @ wu
  return (g * (1.0 / (1.0 + jnp.exp(-g))) * u) @ wd


@pytest.mark.parametrize("shape", [(2, 33, 16), (5, 16)])
def test_swiglu_gradients_equal_autodiff_in_float64(shape):
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    d, f = shape[-1], 24
    x = jnp.asarray(rng.normal(size=shape))
    ws = [jnp.asarray(rng.normal(size=s) * 0.3) for s in ((d, f), (d, f), (f, d))]
    ct = jnp.asarray(rng.normal(size=shape))
    loss = lambda fn: lambda *a: jnp.sum(fn(*a) * ct)
    got = jax.grad(loss(swiglu_lib.swiglu), argnums=(0, 1, 2, 3))(x, *ws)
    want = jax.grad(loss(_plain), argnums=(0, 1, 2, 3))(x, *ws)
    np.testing.assert_allclose(swiglu_lib.swiglu(x, *ws), _plain(x, *ws), rtol=1e-12)
    for a, b in zip(got, want):
      assert a.shape == b.shape
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)
