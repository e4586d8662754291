"""The package stands without the checkout: a wheel built from the repository, installed
into a temporary directory, trains ``--config smoke`` from a directory outside the
checkout, and its multi-process launcher runs there too.

The wheel is built from a copy of the files the build reads (``pyproject.toml``,
``README.md``, ``neo_jax/``), so the checkout gets no ``build/`` or ``*.egg-info``; without
build isolation (the test environment pins setuptools), so no index is needed. The
installed copy runs under ``python -S`` with ``PYTHONPATH`` = the target directory + this
environment's site-packages: no ``.pth`` file runs, so the editable install of the
checkout (a ``.pth`` finder) cannot stand in for the wheel.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import site
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """``(target directory, environment)`` of the wheel installed with ``--no-deps``."""
  tmp = tmp_path_factory.mktemp("wheel")
  src = tmp / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, src / name)
  shutil.copytree(ROOT / "neo_jax", src / "neo_jax",
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  wheels, target = tmp / "wheels", tmp / "site"
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
  r = subprocess.run(pip + ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                            str(src)], cwd=tmp, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  (wheel,) = wheels.glob("neo_jax-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  # The recipes and the local launcher ship; the checkout's other folders do not.
  assert {"neo_jax/configs/smoke.py", "neo_jax/configs/neo_ov_2b.py",
          "neo_jax/configs/recipe_values.py", "neo_jax/launch/local.py"} <= set(names)
  assert not [n for n in names if n.split("/")[0] in ("tests", "bench", "configs", "launch")]
  r = subprocess.run(pip + ["install", "-q", "--no-deps", "--no-index", "--target", str(target),
                            str(wheel)], cwd=tmp, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NEO_JAX_"))}
  env.update(PYTHONPATH=os.pathsep.join([str(target)] + site.getsitepackages()),
             JAX_PLATFORMS="cpu", NEO_JAX_LOOPBACK_ONLY="1")
  return target, env


def _run(argv, env, cwd):
  return subprocess.run([sys.executable, "-S", *argv], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=900)


def test_the_installed_wheel_trains_smoke_outside_the_checkout(installed, tmp_path):
  target, env = installed
  r = _run(["-c", "import neo_jax.configs, neo_jax.train; print(neo_jax.__file__)"], env, tmp_path)
  assert r.returncode == 0 and r.stdout.strip() == str(target / "neo_jax" / "__init__.py"), \
      r.stdout + r.stderr[-2000:]
  workdir = tmp_path / "run"
  r = _run(["-m", "neo_jax.train", "--config", "smoke:steps=2", "--workdir", str(workdir)],
           env, tmp_path)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = {r["step"]: r["loss"] for r in records if r["kind"] == "train"}
  assert sorted(losses) == [1, 2] and all(0 < v < 100 for v in losses.values()), losses
  assert (workdir / "checkpoints" / "2").is_dir()


def test_the_installed_launcher_runs_its_processes(installed, tmp_path):
  _, env = installed
  child = ("import sys, neo_jax.launch.local as m; "
           "print('child', m.__file__.startswith(sys.argv[1]), *sys.argv[2:])")
  r = _run(["-m", "neo_jax.launch.local", "--num_processes=2", "--devices_per_process=1", "--",
            sys.executable, "-S", "-c", child, str(installed[0])], env, tmp_path)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  got = sorted(l for l in r.stdout.splitlines() if " child " in l)
  assert len(got) == 2 and all(" child True --coordinator_address=127.0.0.1:" in l for l in got)
  assert got[0].startswith("[0] ") and got[0].endswith("--num_processes=2 --process_id=0")
  assert got[1].startswith("[1] ") and got[1].endswith("--num_processes=2 --process_id=1")
