"""Peak host memory of ``bench/train_step.py``'s step, by how the state and the step are built.

Issue 28: a fresh process per variant builds the workload's state and step, runs
``--steps`` steps and reports its peak RSS (VmHWM) and resident set after each phase
(imports, set-up, state, compile, each step). Variants:

* ``trainer``: as ``neo_jax.train`` does: ``Setup.init_state`` (a jitted init, the
  state created in place) and ``Setup.compile_train_step`` (the state donated).
* ``plain``: the state from ``Setup.init_state``, the step a plain
  ``jax.jit(functools.partial(train.step.train_step, ...))`` (no donation).
* ``plain_donate``: the same with ``donate_argnums=(0,)``.
* ``eager_init``: ``model.init`` + ``tx.init`` outside jit, plain jit with donation.

Memory is not disturbed by other jobs on the machine (timings are: none here).

    JAX_PLATFORMS=cpu PYTHONPATH=. python bench/train_step_memory.py --configs A,B \\
        --variants trainer,plain,plain_donate,eager_init
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # pylint: disable=wrong-import-position
import train_step  # pylint: disable=wrong-import-position


def _rss_gib() -> float:
  with open("/proc/self/status", encoding="ascii") as f:
    return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 2 ** 20


def measure(name: str, variant: str, a) -> dict:
  """One variant in this process: ``{phase: (peak GiB so far, resident GiB)}``."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from neo_jax.train import setup as setup_lib, step as step_lib  # pylint: disable=import-outside-toplevel
  phases = {}
  mark = lambda tag: phases.__setitem__(tag, (round(benchlib.hwm_mib() / 1024, 3),
                                              round(_rss_gib(), 3)))
  mark("imports")
  config = train_step.make_config(train_step.VOCABS[name], a.impl, a)
  batch = train_step.workload_batch(a.seq, train_step.VOCABS[name], config.model)
  setup = setup_lib.Setup(config, mesh=setup_lib.sharding.make_mesh(
      dict(config.mesh), devices=jax.devices()[:1]))
  mark("setup")
  if variant == "eager_init":
    params = nn.meta.unbox(setup.model.init(jax.random.PRNGKey(0), *setup_lib._dummy_inputs(  # pylint: disable=protected-access
        config.model))["params"])
    state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, setup.tx.init(params))
  else:
    state = setup.init_state(0)
  jax.block_until_ready(state)
  mark("state")
  if variant == "trainer":
    step = setup.compile_train_step(log=lambda s: None)
    batch = jax.device_put(batch, setup.batch_shardings)
  else:
    fn = functools.partial(step_lib.train_step, model=setup.model, tx=setup.tx,
                           grad_accum_steps=1, trainable=setup.trainable,
                           lr_schedule=setup.lr_schedule)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    donate = () if variant == "plain" else (0,)
    step = jax.jit(fn, donate_argnums=donate).lower(state, batch).compile()
  temp = step.memory_analysis().temp_size_in_bytes / 2 ** 30
  mark("compile")
  for i in range(a.steps):
    state, metrics = step(state, batch)
    jax.block_until_ready(state)
    mark(f"step{i}")
  return {"config": name, "variant": variant, "peak_rss_gib": benchlib.hwm_mib() / 1024,
          "xla_temp_gib": temp, "loss": float(metrics["loss"]), "phases": phases}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--configs", default="A,B")
  ap.add_argument("--variants", default="trainer,plain,plain_donate,eager_init")
  ap.add_argument("--impl", default="auto")
  train_step.add_workload_args(ap, max_visual=128)
  ap.add_argument("--steps", type=int, default=2)
  ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a.one:
    print(json.dumps(measure(*a.one.split(":"), a)))
    return
  args = [f"--{k}={getattr(a, k)}" for k in ("impl", "seq", "hidden", "layers", "block",
                                             "max_supervised", "max_visual", "steps")]
  print("| config | variant | peak RSS GiB | resident after state / compile GiB | XLA temp GiB |")
  print("|---|---|---|---|---|")
  for name in a.configs.split(","):
    for variant in a.variants.split(","):
      r = benchlib.run_fresh(__file__, [f"--one={name}:{variant}"] + args)
      print(json.dumps(r), file=sys.stderr, flush=True)
      print(f"| {name} | {variant} | {r['peak_rss_gib']:.2f} | {r['phases']['state'][1]:.2f} / "
            f"{r['phases']['compile'][1]:.2f} | {r['xla_temp_gib']:.2f} |", flush=True)


if __name__ == "__main__":
  main()
