"""NEO-ov 9B training recipe: the NEO-ov paper's values (``recipe_values.py``).

    python -m neo_jax.train --config neo_ov_9b:stage2,data=mix.yaml --workdir gs://.../neo_ov_9b-s2
    python -m neo_jax.aot --config neo_ov_9b:stage2,devices=32 --topology v5p-64

The argument is the stage (``stage1`` | ``stage2`` | ``stage3``), then optionally
``,devices=N`` (the run's data x fsdp devices: one packed row per device and micro-step,
``grad_accum_steps = rows / N``; default 128), ``,batch_size=R`` (rows), ``,data=...``.
The release ships no NEO-ov training scripts, so there is no ``values=release``.
Remat policy and mesh are per-pod choices: the AOT-checked plans are in BUILD_NOTES.md
§5; pass them as ``--config.mesh.fsdp=... --config.mesh.tensor=...``.
"""

from neo_jax.configs import common


def get_config(arg=None):
  return common.recipe_config("neo_ov_9b", arg, ov=True)


def sweep():
  """Peak learning rate x pre-Buffer depth (big_vision style; ``neo_jax.sweep``)."""
  return [{"config.train.lr": lr, "config.model.num_prebuffer_layers": depth}
          for lr in (2e-5, 5e-5, 1e-4) for depth in (3, 6)]
