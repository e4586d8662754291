"""NEO 2B training recipe: the release's 2B scripts, value by value (``recipe_values.py``).

    python -m neo_jax.train --config neo_2b:stage2,data=mix.yaml --workdir gs://.../neo_2b-s2
    python -m neo_jax.train --config neo_2b:stage2,values=paper,data=mix.yaml ...
    python -m neo_jax.aot --config neo_2b:stage2,devices=32 --topology v5p-64

The argument is the stage (``stage1`` | ``stage2`` | ``stage3``), then optionally
``,values=paper`` (the NEO paper's values where they differ from the authors' scripts
``VLMTrainKit/scripts/2B_{1PT,2MTsi,3SFTsi}.sh``; default ``release``),
``,devices=N`` (the run's data x fsdp devices: one packed row per device and
micro-step, ``grad_accum_steps = rows / N``; default 128, the paper's 16 nodes x 8
GPUs), ``,batch_size=R`` (rows), ``,data=...``. Remat policy and mesh are per-pod
choices: the AOT-checked plans are in BUILD_NOTES.md §5; pass them as
``--config.mesh.fsdp=... --config.mesh.tensor=...``.
"""

from neo_jax.configs import common


def get_config(arg=None):
  return common.recipe_config("neo_2b", arg, ov=False)


def sweep():
  """Peak learning rate x pre-Buffer depth (big_vision style; ``neo_jax.sweep``)."""
  return [{"config.train.lr": lr, "config.model.num_prebuffer_layers": depth}
          for lr in (2e-5, 5e-5, 1e-4) for depth in (6, 12)]
