"""A ``uv`` stand-in for the loopback TPU workers: records the environment commands.

``launch/pod_worker.py setup`` runs ``uv venv --python 3.11 DIR`` and ``uv pip install
--python DIR/bin/python -r requirements-pod.txt -e .[tpu]``; the real ones need the package
index (minutes, gigabytes). This stand-in:

* ``venv --python X DIR``: makes ``DIR/bin/python``, a wrapper around the test's own
  interpreter (``FAKE_UV_PYTHON``, default this interpreter), after checking that it is
  Python >= X; so the trainer later runs with the test environment's packages.
* ``pip install --python PY -r FILE [-e SPEC]``: checks that PY exists, reads FILE and
  fails (status 1) if it would install torch, checks that ``-e .[tpu]`` names an extra
  of ``./pyproject.toml``; installs nothing.
* anything else: status 2.

Every call is appended to ``FAKE_UV_LOG`` (JSON lines: ``{"argv": [...], "cwd": ...}``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import subprocess
import sys
import tomllib

SELF = os.path.abspath(__file__)


def install(bin_dir: str) -> str:
  """Writes an executable ``bin_dir/uv`` running this stand-in; returns its path."""
  os.makedirs(bin_dir, exist_ok=True)
  path = os.path.join(bin_dir, "uv")
  with open(path, "w") as f:
    f.write(f'#!/bin/sh\nexec "{sys.executable}" "{SELF}" "$@"\n')
  os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
  return path


def cmd_venv(a) -> int:
  python = os.environ.get("FAKE_UV_PYTHON", sys.executable)
  want = tuple(int(x) for x in a.python.split("."))
  have = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"],
                        capture_output=True, text=True, check=True).stdout.split()
  if tuple(map(int, have)) < want:
    print(f"error: no Python >= {a.python} (the stand-in has {'.'.join(have)})", file=sys.stderr)
    return 1
  bin_dir = os.path.join(os.path.abspath(a.path), "bin")
  os.makedirs(bin_dir, exist_ok=True)
  wrapper = os.path.join(bin_dir, "python")
  with open(wrapper, "w") as f:
    f.write(f'#!/bin/sh\nexec "{python}" "$@"\n')
  os.chmod(wrapper, os.stat(wrapper).st_mode | stat.S_IEXEC)
  print(f"Creating virtual environment at: {a.path} (stand-in: wraps {python})")
  return 0


def cmd_pip_install(a) -> int:
  if not os.access(a.python, os.X_OK):
    print(f"error: no interpreter at {a.python}", file=sys.stderr)
    return 1
  for req in a.requirement:
    with open(req) as f:
      names = [re.split(r"[<>=!~\[; ]", l.strip(), maxsplit=1)[0].lower()
               for l in f if l.strip() and not l.lstrip().startswith("#")]
    if "torch" in names:
      print(f"error (stand-in): {req} would install torch on a TPU worker", file=sys.stderr)
      return 1
  for spec in a.editable:
    m = re.fullmatch(r"(.+?)(?:\[([\w,-]+)\])?", spec)
    with open(os.path.join(m.group(1), "pyproject.toml"), "rb") as f:
      extras = tomllib.load(f)["project"].get("optional-dependencies", {})
    missing = [e for e in (m.group(2) or "").split(",") if e and e not in extras]
    if missing:
      print(f"error: {spec}: no extra {missing}", file=sys.stderr)
      return 1
  print(f"Resolved and installed (stand-in: nothing installed) {a.requirement + a.editable}")
  return 0


def main(argv: list[str]) -> int:
  if os.environ.get("FAKE_UV_LOG"):
    with open(os.environ["FAKE_UV_LOG"], "a") as f:
      f.write(json.dumps({"argv": argv, "cwd": os.getcwd()}) + "\n")
  ap = argparse.ArgumentParser(prog="uv")
  sub = ap.add_subparsers(dest="cmd", required=True)
  v = sub.add_parser("venv")
  v.add_argument("--python", required=True)
  v.add_argument("path")
  pip = sub.add_parser("pip").add_subparsers(dest="pip_cmd", required=True)
  i = pip.add_parser("install")
  i.add_argument("--python", required=True)
  i.add_argument("-r", "--requirement", action="append", default=[])
  i.add_argument("-e", "--editable", action="append", default=[])
  a = ap.parse_args(argv)
  return cmd_venv(a) if a.cmd == "venv" else cmd_pip_install(a)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
