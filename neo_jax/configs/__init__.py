"""The training configs, shipped with the package (big_vision style: a file per recipe
with ``get_config(arg)`` returning an ``ml_collections.ConfigDict``).

==============  =======================================================================
``demo``        small NEO on the embedded real-image data, CPU-sized
``smoke``       tiny model on random packed batches (tests, AOT checks)
``ablation``    the NEO paper's Table 3 ablation at demo scale, one variant and seed
``neo_2b``      NEO 2B / 9B: the release's training scripts value by value,
``neo_9b``      argument ``stage1`` | ``stage2`` | ``stage3`` (``recipe_values.py``)
``neo_ov_2b``   NEO-ov 2B / 9B: the NEO-ov paper's values, same arguments
``neo_ov_9b``
==============  =======================================================================

``common`` (the schema ``base_config``, ``recipe_config``) and ``recipe_values`` are the
pieces they are made of; a config file of one's own imports them
(``from neo_jax.configs import common``).

Every CLI that takes ``--config`` (``neo_jax.train``, ``neo_jax.aot``, ``neo_jax.sweep``,
``neo_jax.data.audit``) reads ``NAME[:arg]`` through ``resolve``:

* a bare name, ``demo``, ``smoke:steps=2``, ``neo_ov_2b:stage2``: the packaged file;
* the path of a file, ``my_configs/big.py:arg``: that file;
* ``configs/<name>.py[:arg]`` (where a checkout kept the configs before they moved
  into the package) when no such file exists and ``<name>`` is packaged: the
  packaged file, so commands written for the checkout keep working anywhere.

This module imports nothing of neo_jax at import time (the CLIs import it before JAX).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import types

NAMES = ("demo", "smoke", "ablation", "neo_2b", "neo_9b", "neo_ov_2b", "neo_ov_9b")
_HERE = os.path.dirname(os.path.abspath(__file__))
OLD_FOLDER = "configs"   # the checkout's folder of config files, before they moved here

__all__ = ["NAMES", "define_flag", "get_config", "load", "path", "resolve"]


def path(name: str) -> str:
  """The file of the packaged config ``name``.

  Raises:
    ValueError: ``name`` is not one of ``NAMES``.
  """
  if name not in NAMES:
    raise ValueError(f"Unknown config {name!r}: the packaged configs are {', '.join(NAMES)}; "
                     "or give the path of a config file (my_config.py[:arg]).")
  return os.path.join(_HERE, f"{name}.py")


def _split(spec: str) -> tuple[str, str | None]:
  head, sep, arg = os.fspath(spec).partition(":")   # ml_collections splits at the first ':'
  return head, (arg if sep else None)


def _file(head: str) -> str:
  """The config file ``head`` names (see the module docstring for the rules)."""
  if os.sep not in head and "/" not in head and not head.endswith(".py"):
    return path(head)
  if os.path.isfile(head):
    return head
  folder, base = os.path.split(head)
  name = base[:-3] if base.endswith(".py") else ""
  if os.path.basename(os.path.normpath(folder)) == OLD_FOLDER and name in NAMES:
    return path(name)
  raise ValueError(f"No config file {head!r}: give a packaged config by name "
                   f"({', '.join(NAMES)}) or the path of a config file.")


def resolve(spec: str) -> str:
  """``NAME[:arg]`` -> ``FILE[:arg]`` (the form ``ml_collections.config_flags`` loads).

  Args:
    spec: a packaged name, a file path or ``configs/<name>.py``, with an optional
      ``:arg`` for ``get_config`` (``"neo_ov_2b:stage2,devices=32"``).

  Returns:
    The absolute path of a packaged file, or the path given, followed by ``:arg``.

  Raises:
    ValueError: an unknown name, or a path that is no file.
  """
  head, arg = _split(spec)
  out = _file(head)
  return out if arg is None else f"{out}:{arg}"


def load(spec: str) -> types.ModuleType:
  """The config module ``spec`` names (its ``get_config``, ``sweep`` ...); ``:arg`` is
  ignored. Packaged configs are imported as ``neo_jax.configs.<name>``, files by path.

  Raises:
    ValueError: as ``resolve``.
  """
  head, _ = _split(spec)
  file = _file(head)
  name = os.path.basename(file)[:-3]
  if os.path.dirname(os.path.abspath(file)) == _HERE and name in NAMES:
    return importlib.import_module(f"{__name__}.{name}")
  module_spec = importlib.util.spec_from_file_location(f"_neo_jax_config_{name}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def get_config(spec: str):
  """The ``ConfigDict`` of ``NAME[:arg]``, as ``--config NAME[:arg]`` gives it (without
  command-line overrides; not locked): ``get_config(arg)``, or ``get_config()``
  without ``:arg``.

  Raises:
    ValueError: as ``resolve``.
  """
  _, arg = _split(spec)
  module = load(spec)
  return module.get_config() if arg is None else module.get_config(arg)


def define_flag(name: str = "config", help_string: str | None = None,
                lock_config: bool = True, flag_values=None, sys_argv=None):
  """Defines ``--<name>`` as ``ml_collections.config_flags.DEFINE_config_file`` does
  (``--<name>.key=value`` overrides included), its value read through ``resolve``.

  Args:
    name: the flag's name.
    help_string: its help (default: says what the value may be).
    lock_config: lock the ``ConfigDict`` (no new fields).
    flag_values: the ``absl.flags.FlagValues`` (default ``absl.flags.FLAGS``).
    sys_argv: the argv whose ``--<name>.key`` overrides count (default ``sys.argv``).

  Returns:
    The ``absl.flags.FlagHolder`` (``.value`` is the ``ConfigDict``).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  class _Resolving(flags.ArgumentParser):
    """``config_flags``' own parser, given ``resolve(argument)`` (a ``ValueError``
    becomes absl's ``flag --config=...: <message>``)."""

    def __init__(self, inner):
      self.inner = inner

    def parse(self, argument):
      return self.inner.parse(resolve(argument))

    def flag_type(self):
      return self.inner.flag_type()

  help_string = help_string or (f"Training config: a packaged name ({', '.join(NAMES)}) "
                                "or a config file, with ':arg' for its get_config.")
  flag_values = flags.FLAGS if flag_values is None else flag_values
  holder = config_flags.DEFINE_config_file(name, None, help_string, flag_values=flag_values,
                                           lock_config=lock_config, sys_argv=sys_argv)
  flag_values[name].parser = _Resolving(flag_values[name].parser)
  return holder
