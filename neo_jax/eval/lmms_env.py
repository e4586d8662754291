"""An environment for lmms-eval with neo_jax in it.

lmms-eval 0.7.3 pins ``av<16`` and (through wandb) ``protobuf<7``; neo_jax pins
``av>=18.1`` and its lock file protobuf 7, so the two do not install together. This
builds a virtual environment of its own::

  python -m neo_jax.eval.lmms_env --venv ~/.venvs/lmms-eval

1. ``torch==2.13.0`` first (on a CPU host its CPU wheel; an unpinned torch would bring
   CUDA wheels of several GB);
2. neo_jax itself without its dependencies (``pip install --no-deps -e <repo>``), which
   registers the ``neo_jax`` model with lmms-eval (``[project.entry-points."lmms_eval.models"]``);
3. the ``eval`` extra of ``pyproject.toml``: lmms-eval and the pinned part of neo_jax's
   dependencies the evaluation needs (JAX, Flax, Orbax, tokenizers, Pillow), with
   ``filelock`` below 4 (lmms-eval 0.7.3 imports ``filelock._api``);
4. where torchvision cannot be imported (the package index's torchvision is a CUDA build,
   which does not load next to torch's CPU wheel), it is removed again: lmms-eval's core
   and the ``neo_jax`` model do not use it, and transformers, which lmms-eval imports,
   only imports it when it is installed.

Video decoding inside it uses PyAV 15 (lmms-eval's pin).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tomllib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def requirements(pyproject: str | None = None) -> list[str]:
  """The ``eval`` extra: from the source checkout's ``pyproject.toml``, else the installed
  package's metadata.

  Raises:
    FileNotFoundError: neither has it.
  """
  path = pyproject or os.path.join(REPO, "pyproject.toml")
  if os.path.exists(path):
    with open(path, "rb") as f:
      return list(tomllib.load(f)["project"]["optional-dependencies"]["eval"])
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  reqs = [r.split(";")[0].strip() for r in metadata.requires("neo_jax") or []
          if 'extra == "eval"' in r]
  if not reqs:
    raise FileNotFoundError("no 'eval' extra: run from a neo_jax source checkout")
  return reqs


def build(venv: str, *, install_neo_jax: bool = True, log=print) -> str:
  """Creates ``venv`` (steps in the module docstring); returns its Python.

  ``install_neo_jax=False`` leaves out step 2 (a shared environment used with several
  checkouts on ``PYTHONPATH``, as the tests do).

  Raises:
    subprocess.CalledProcessError: a step failed (pip's output is in the log).
  """
  reqs = requirements()
  torch = next(r for r in reqs if r.startswith("torch=="))
  python = os.path.join(venv, "bin", "python")
  steps = [[sys.executable, "-m", "venv", "--clear", venv],
           [python, "-m", "pip", "install", "-q", torch]]
  if install_neo_jax:
    steps.append([python, "-m", "pip", "install", "-q", "--no-deps", "-e", REPO])
  steps.append([python, "-m", "pip", "install", "-q", *reqs])
  for cmd in steps:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True)
  if subprocess.run([python, "-c", "import torchvision"], capture_output=True).returncode:
    log("torchvision does not load next to this torch: removing it (step 4)")
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "torchvision"], check=True)
  return python


def main(argv=None) -> None:
  """``--venv DIR``: build it; ``--print`` (or nothing): list the eval requirements."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--venv", help="where to create the environment")
  p.add_argument("--print", action="store_true", help="print the eval requirements and exit")
  a = p.parse_args(argv)
  if a.print or not a.venv:
    print("\n".join(requirements()))
    return
  python = build(a.venv)
  print(f"lmms-eval environment ready: {python} -m lmms_eval --model neo_jax ...")


if __name__ == "__main__":
  main()
