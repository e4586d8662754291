"""The model on both attention paths: the Pallas kernel (interpret mode on CPU)
against the float64 NumPy reference and against the XLA path, forward and grads."""

import jax
import numpy as np
import pytest

from testlib import model as mf
from testlib import np_reference as ref


def test_pallas_path_logits_match_float64_reference():
  """attention_impl="pallas" (block 32, so several blocks and skipping occur) gives the
  reference logits to <= 1e-4, like the XLA path."""
  cfg = mf.tiny_config(attention_impl="pallas", attention_block_q=32, attention_block_kv=32)
  pb = mf.packed_batch(cfg, seed=0)
  params = mf.init_params(cfg, seed=0)
  want = ref.forward(pb.batch["input_ids"], pb.batch["segment_ids"], pb.images,
                     mf.export_weights(cfg, params), mf.reference_config(cfg))
  got = np.asarray(mf.logits_fn(cfg)(params, pb.batch), np.float64)
  real = pb.batch["segment_ids"] > 0
  assert np.abs(got - want)[real].max() <= 1e-4


@pytest.mark.slow  # a minute; the kernel's gradients are tested op by op in test_flash_mixed (default)
def test_pallas_path_gradients_match_xla_path():
  """Gradients of the training loss agree between the kernel and the XLA attention."""
  pb = None
  grads = {}
  for impl in ("xla", "pallas"):
    cfg = mf.tiny_config(attention_impl=impl, attention_block_q=32, attention_block_kv=32)
    pb = pb or mf.packed_batch(cfg, seed=1)
    params = mf.init_params(cfg, seed=1)
    grads[impl] = jax.grad(lambda p: mf.loss_value(cfg, p, pb.batch))(params)
  flat_x = jax.tree_util.tree_leaves_with_path(grads["xla"])
  flat_p = dict(jax.tree_util.tree_leaves_with_path(grads["pallas"]))
  for path, gx in flat_x:
    gp = flat_p[path]
    scale = max(float(np.abs(gx).max()), 1e-6)
    assert float(np.abs(np.asarray(gp) - np.asarray(gx)).max()) <= 1e-4 * scale + 1e-7, \
        jax.tree_util.keystr(path)
