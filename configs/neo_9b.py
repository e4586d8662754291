"""NEO-9B training recipe (NEO_SPEC §1.6 sizes, §4 stages).

    python -m neo_jax.train --config configs/neo_9b.py:stage2 --workdir gs://.../neo_9b-s2
    python -m neo_jax.aot --config configs/neo_9b.py:stage2 --topology v5p-64

The argument is the stage (``stage1`` | ``stage2`` | ``stage3``), optionally
with ``,batch_size=N``. Mesh, remat policy and gradient accumulation are
per-pod choices: the AOT-checked plans are in BUILD_NOTES.md §5; pass them as
``--config.mesh.fsdp=... --config.train.grad_accum_steps=...``.
"""

from configs import common


def get_config(arg=None):
  return common.recipe_config("neo_9b", arg, ov=False)


def sweep():
  """Peak learning rate x pre-Buffer depth (big_vision style; ``neo_jax.sweep``)."""
  return [{"config.train.lr": lr, "config.model.num_prebuffer_layers": depth}
          for lr in (2e-5, 5e-5, 1e-4) for depth in (3, 6)]
