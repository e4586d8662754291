"""Lists (or runs, one after the other) the points of a config's ``sweep()``.

    python -m neo_jax.sweep --config neo_ov_2b:stage2 --workdir /runs/s2 [--launch]

``--config`` names a packaged config or a config file (``neo_jax.configs.resolve``).
A config file may define ``sweep()`` returning a list of ``{"config.key": value}``
points (big_vision style). Each point becomes one ``python -m neo_jax.train``
command with its own work directory ``{workdir}/{index}_{key=value,...}``;
without ``--launch`` the commands are printed.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

from absl import app, flags

from neo_jax import configs

_CONFIG = flags.DEFINE_string("config", None, "A packaged config or a config file, with "
                              "an optional ':arg'.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/neo_sweep", "Parent directory of the runs.")
_LAUNCH = flags.DEFINE_bool("launch", False, "Run the commands sequentially.")
flags.mark_flags_as_required(["config"])


def load_sweep(config_arg: str) -> list[dict]:
  """The points of ``sweep()`` in the config ``NAME[:arg]`` (a packaged name or a file).

  Raises:
    ValueError: an unknown config, or one that defines no ``sweep``.
  """
  mod = configs.load(config_arg)
  if not hasattr(mod, "sweep"):
    raise ValueError(f"{config_arg.split(':', 1)[0]} defines no sweep().")
  return list(mod.sweep())


def commands(config_arg: str, workdir: str) -> list[list[str]]:
  """One ``neo_jax.train`` argv per sweep point."""
  out = []
  for i, point in enumerate(load_sweep(config_arg)):
    name = ",".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())
    out.append([sys.executable, "-m", "neo_jax.train", f"--config={config_arg}",
                f"--workdir={workdir}/{i:02d}_{name}"] + [f"--{k}={v}" for k, v in point.items()])
  return out


def main(argv):
  del argv
  for cmd in commands(_CONFIG.value, _WORKDIR.value):
    print(shlex.join(cmd), flush=True)
    if _LAUNCH.value:
      subprocess.run(cmd, check=True)


if __name__ == "__main__":
  app.run(main)
