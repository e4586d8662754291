"""A ``docker`` stand-in for ``launch/build_image.sh``: checks the build context, records.

* ``build [--platform=P] -f DOCKERFILE -t IMAGE CONTEXT``: reads the Dockerfile and fails
  (status 1) when the base image is not ``python:3.X...`` with X >= 11, or a ``COPY``
  source is missing from the context or excluded by ``.dockerignore`` (what a real build
  would reject or silently leave out); builds nothing.
* ``push IMAGE``: records.

Every call is appended to ``FAKE_DOCKER_LOG`` as JSON: ``{"argv", "cwd", "checked"}``
(``checked``: the base image and the COPY sources of a build). No daemon, no registry.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import stat
import sys

SELF = os.path.abspath(__file__)


def install(bin_dir: str) -> str:
  os.makedirs(bin_dir, exist_ok=True)
  path = os.path.join(bin_dir, "docker")
  with open(path, "w") as f:
    f.write(f'#!/bin/sh\nexec "{sys.executable}" "{SELF}" "$@"\n')
  os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
  return path


def ignored(path: str, patterns: list[str]) -> bool:
  """True if ``path`` (relative, ``/``-separated) or a parent matches a .dockerignore
  pattern (``*``, ``?``, ``**``, a leading ``/``; no ``!`` exceptions)."""
  parts = path.split("/")
  for pat in patterns:
    pat = pat.strip().lstrip("/")
    if pat.startswith("**/"):
      if any(fnmatch.fnmatch(p, pat[3:]) for p in parts):
        return True
    for k in range(1, len(parts) + 1):
      if fnmatch.fnmatch("/".join(parts[:k]), pat):
        return True
  return False


def check_build(dockerfile: str, context: str) -> dict:
  """The base image and COPY sources of ``dockerfile``; raises SystemExit on a problem."""
  ignore_path = os.path.join(context, ".dockerignore")
  patterns = []
  if os.path.exists(ignore_path):
    with open(ignore_path) as f:
      patterns = [l.strip() for l in f if l.strip() and not l.startswith("#")]
  with open(os.path.join(context, dockerfile)) as f:
    text = re.sub(r"\\\n", " ", f.read())
  base, copied = None, []
  for line in text.splitlines():
    words = shlex.split(line, comments=True)
    if not words:
      continue
    if words[0].upper() == "FROM":
      base = words[1]
      m = re.fullmatch(r"python:3\.(\d+)(\S*)", base)
      if not m or int(m.group(1)) < 11:
        raise SystemExit(f"fake docker: base image {base!r} is not Python >= 3.11")
    elif words[0].upper() == "COPY" and not any(w.startswith("--from") for w in words):
      for src in words[1:-1]:
        if src == ".":
          continue
        if not os.path.exists(os.path.join(context, src)):
          raise SystemExit(f"fake docker: COPY {src}: not in the build context {context}")
        if ignored(src, patterns):
          raise SystemExit(f"fake docker: COPY {src}: excluded by .dockerignore")
        copied.append(src)
  if base is None:
    raise SystemExit("fake docker: no FROM")
  return {"base": base, "copied": copied}


def main(argv: list[str]) -> int:
  record = {"argv": argv, "cwd": os.getcwd()}
  if argv[:1] == ["build"]:
    ap = argparse.ArgumentParser(prog="docker build")
    ap.add_argument("--platform")
    ap.add_argument("-f", "--file", default="Dockerfile")
    ap.add_argument("-t", "--tag", required=True)
    ap.add_argument("context")
    a = ap.parse_args(argv[1:])
    record["checked"] = check_build(a.file, a.context)
  elif argv[:1] != ["push"] or len(argv) != 2:
    print(f"fake docker: unsupported {argv}", file=sys.stderr)
    return 2
  if os.environ.get("FAKE_DOCKER_LOG"):
    with open(os.environ["FAKE_DOCKER_LOG"], "a") as f:
      f.write(json.dumps(record) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
