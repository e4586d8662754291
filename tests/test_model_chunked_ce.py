"""model/chunked_ce.py: the chunked LM head + cross entropy and its hand-written backward
against autodiff of the full-logits formula, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neo_jax.model import chunked_ce


def _full(hidden, head, target, layout):
  logits = hidden @ (head.T if layout == "vd" else head)
  lse = jax.scipy.special.logsumexp(logits, axis=-1)
  return lse - jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]


@pytest.mark.parametrize("layout", ["vd", "dv"])
@pytest.mark.parametrize("chunk", [7, 16, 50, 64])   # overlapping last chunk, divides, one chunk, > V
def test_values_and_gradients_equal_full_logits_in_float64(layout, chunk):
  with jax.enable_x64(True):
    rng = np.random.default_rng(chunk)
    n, d, v = 13, 8, 48
    hidden = jnp.asarray(rng.normal(size=(n, d)))
    head = jnp.asarray(rng.normal(size=(v, d) if layout == "vd" else (d, v)))
    target = jnp.asarray(rng.integers(0, v, size=n), jnp.int32)
    # Row weights with zeros (unsupervised rows) and unequal values.
    weight = jnp.asarray(rng.uniform(size=n) * (rng.uniform(size=n) > 0.3))
    got_fn = lambda h, w: jnp.sum(weight * chunked_ce.chunked_cross_entropy(
        h, w, target, chunk=chunk, head_layout=layout))
    want_fn = lambda h, w: jnp.sum(weight * _full(h, w, target, layout))
    np.testing.assert_allclose(
        chunked_ce.chunked_cross_entropy(hidden, head, target, chunk=chunk, head_layout=layout),
        _full(hidden, head, target, layout), rtol=1e-12)
    got = jax.grad(got_fn, argnums=(0, 1))(hidden, head)
    want = jax.grad(want_fn, argnums=(0, 1))(hidden, head)
    for a, b in zip(got, want):
      assert a.shape == b.shape and a.dtype == b.dtype
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)


def test_float32_head_with_bfloat16_hidden_gives_float32_head_gradient():
  """The head is cast to the hidden dtype inside; its gradient comes back in the
  head's own dtype (float32 master weights), close to the float32 computation."""
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.normal(size=(9, 16)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(16, 40)) * 0.2, jnp.float32)
  target = jnp.asarray(rng.integers(0, 40, size=9), jnp.int32)
  f = lambda h, w: jnp.sum(chunked_ce.chunked_cross_entropy(h, w, target, chunk=16,
                                                            head_layout="dv"))
  g16 = jax.grad(f, argnums=1)(hidden.astype(jnp.bfloat16), head)
  g32 = jax.grad(f, argnums=1)(hidden, head)
  assert g16.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(g16), np.asarray(g32), atol=0.05)


def test_bad_arguments_raise():
  h, w, t = jnp.zeros((2, 4)), jnp.zeros((10, 4)), jnp.zeros((2,), jnp.int32)
  with pytest.raises(ValueError, match="head_layout"):
    chunked_ce.chunked_cross_entropy(h, w, t, chunk=4, head_layout="xy")
  with pytest.raises(ValueError, match="chunk"):
    chunked_ce.chunked_cross_entropy(h, w, t, chunk=0)
