"""The packaged configs and ``--config NAME[:arg]`` (``neo_jax/configs/__init__.py``).

The rules: a bare name is the packaged file, an existing file is itself, a missing
``configs/<name>.py`` (the checkout's old folder) is the packaged file; anything else is
a clear ``ValueError`` (absl's ``flag --config=...`` error on the command line).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from absl import flags
import pytest

from neo_jax import configs
from neo_jax.configs import neo_ov_2b, smoke

PKG = pathlib.Path(configs.__file__).parent


def test_every_packaged_config_is_named_and_every_name_has_a_file():
  with_get_config = sorted(p.stem for p in PKG.glob("[!_]*.py")
                           if "\ndef get_config(" in p.read_text())
  assert with_get_config == sorted(configs.NAMES)
  assert sorted(configs.NAMES) == ["ablation", "demo", "neo_2b", "neo_9b", "neo_ov_2b",
                                   "neo_ov_9b", "smoke"]


def test_resolve_names_paths_and_the_old_folder(tmp_path, monkeypatch):
  smoke_file = str(PKG / "smoke.py")
  assert configs.resolve("smoke") == smoke_file
  assert configs.resolve("smoke:steps=2,seq_len=64") == smoke_file + ":steps=2,seq_len=64"
  # The checkout's old folder, relative or absolute, when no such file exists.
  monkeypatch.chdir(tmp_path)
  assert configs.resolve("configs/neo_ov_2b.py:stage2") == str(PKG / "neo_ov_2b.py") + ":stage2"
  assert configs.resolve(f"{tmp_path}/configs/demo.py") == str(PKG / "demo.py")
  # A file that exists wins, also one called configs/smoke.py.
  own = tmp_path / "configs" / "smoke.py"
  own.parent.mkdir()
  own.write_text("def get_config(arg=None):\n  return {'mine': arg}\n")
  assert configs.resolve("configs/smoke.py:x") == "configs/smoke.py:x"
  assert configs.get_config("configs/smoke.py:x") == {"mine": "x"}
  assert configs.get_config(str(own)) == {"mine": None}
  for bad, says in [("nope", "Unknown config 'nope'"), ("configs/nope.py", "No config file"),
                    ("elsewhere/smoke.py", "No config file")]:
    with pytest.raises(ValueError, match=says):
      configs.resolve(bad)


def test_get_config_is_the_modules_get_config():
  got = configs.get_config("neo_ov_2b:stage2,devices=32")
  assert got.to_dict() == neo_ov_2b.get_config("stage2,devices=32").to_dict()
  assert configs.get_config("smoke").to_dict() == smoke.get_config().to_dict()
  assert configs.get_config("smoke:steps=3").train.num_steps == 3
  assert configs.load("neo_ov_2b:stage2") is neo_ov_2b


def test_the_flag_resolves_names_and_keeps_overrides():
  argv = ["prog", "--config=neo_ov_2b:stage2,devices=32", "--config.train.lr=0.5"]
  fv = flags.FlagValues()
  holder = configs.define_flag("config", flag_values=fv, sys_argv=argv)
  fv(argv)
  want = neo_ov_2b.get_config("stage2,devices=32")
  assert holder.value.train.lr == 0.5 and want.train.lr != 0.5
  assert holder.value.train.grad_accum_steps == want.train.grad_accum_steps
  bad = ["prog", "--config=nope"]
  fv = flags.FlagValues()
  configs.define_flag("config", flag_values=fv, sys_argv=bad)
  with pytest.raises(flags.IllegalFlagValueError, match="Unknown config 'nope'"):
    fv(bad)


def test_the_cli_takes_a_name_from_any_directory(tmp_path):
  """From a directory without configs: ``neo_jax.sweep`` lists a packaged config's points,
  and a bad name ends ``neo_jax.data.audit`` in flag parsing with the list of names."""
  root = str(pathlib.Path(__file__).resolve().parents[1])
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "neo_jax.sweep", "--config=neo_ov_2b:stage2",
                      f"--workdir={tmp_path}/s"], cwd=tmp_path, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.splitlines()
  assert len(lines) == len(neo_ov_2b.sweep()) and "--config=neo_ov_2b:stage2" in lines[0]
  r = subprocess.run([sys.executable, "-m", "neo_jax.data.audit", "--config=nope"],
                     cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 1 and "Unknown config 'nope'" in r.stderr, r.stderr[-2000:]
