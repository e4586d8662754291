"""train/optimizer.py's global-norm clip (one multiply per leaf) against optax's."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from neo_jax.train import optimizer


@pytest.mark.parametrize("max_norm", [0.5, 1e3])   # clipped, not clipped
def test_clip_equals_optax_clip_by_global_norm(max_norm):
  rng = np.random.default_rng(0)
  tree = {"a": jnp.asarray(rng.normal(size=(7, 5)), jnp.float32),
          "b": {"c": jnp.asarray(rng.normal(size=(11,)), jnp.float32)}}
  ours, theirs = optimizer.clip_by_global_norm(max_norm), optax.clip_by_global_norm(max_norm)
  s_ours, s_theirs = ours.init(tree), theirs.init(tree)
  assert jax.tree_util.tree_structure(s_ours) == jax.tree_util.tree_structure(s_theirs)
  got, _ = jax.jit(ours.update)(tree, s_ours)
  want, _ = jax.jit(theirs.update)(tree, s_theirs)
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-7, atol=0)
  norm = float(optax.tree.norm(got))
  assert norm == pytest.approx(min(max_norm, float(optax.tree.norm(tree))), rel=1e-6)
