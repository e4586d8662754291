"""The release's training kit (``VLMTrainKit/``) for the recipe and data-rule checks.

``NEO_RELEASE_DIR`` (the variable of ``testlib/release.py``) may name the extracted
release's root or any folder inside it (e.g. its ``to_hf`` folder): ``trainkit_dir`` walks
up to the folder that holds ``VLMTrainKit`` (``$NEO_SRC`` a checkout of the release,
``$EXTRACT`` an empty folder, as in ``testlib/release.py``)::

  git -C "$NEO_SRC" archive HEAD VLMTrainKit | tar -x -C "$EXTRACT"
  NEO_RELEASE_DIR="$EXTRACT" bash scripts/test.sh tests/test_recipes.py tests/test_data_conversation.py

The release's data code imports torchvision at module level (``neo/data/utils.py:8``),
which the project does not install; ``release_function`` therefore takes one function (or
one statement of a function) out of a release file with ``ast`` and runs that source,
unchanged, in a namespace that holds only the names it uses.
"""

from __future__ import annotations

import ast
import os
import pathlib
import textwrap
from typing import Any, Callable


def trainkit_dir() -> pathlib.Path | None:
  """``.../VLMTrainKit`` of the release named by ``NEO_RELEASE_DIR``; None when unset.

  Raises:
    FileNotFoundError: the variable is set but no parent holds ``VLMTrainKit/neo``.
  """
  env = os.environ.get("NEO_RELEASE_DIR")
  if not env:
    return None
  p = pathlib.Path(env).resolve()
  for d in (p, *p.parents):
    if (d / "VLMTrainKit" / "neo").is_dir():
      return d / "VLMTrainKit"
  raise FileNotFoundError(f"NEO_RELEASE_DIR={env}: no VLMTrainKit/neo in it or above it.")


def _tree(path: pathlib.Path) -> ast.Module:
  return ast.parse(path.read_text(), filename=str(path))


def release_function(path: pathlib.Path, name: str, namespace: dict[str, Any]) -> Callable:
  """The top-level function ``name`` of the release file ``path``, its source run as is.

  Raises:
    KeyError: no such function.
  """
  for node in _tree(path).body:
    if isinstance(node, ast.FunctionDef) and node.name == name:
      ns = dict(namespace)
      exec(compile(ast.Module([node], []), str(path), "exec"), ns)  # pylint: disable=exec-used
      return ns[name]
  raise KeyError(f"{path} has no function {name!r}")


def release_statement(path: pathlib.Path, cls: str, method: str, starts: str) -> str:
  """The source (dedented) of the statement of ``cls.method`` in ``path`` that starts with
  ``starts``, to ``exec`` in a namespace of the method's local names.

  Raises:
    KeyError: no such class, method or statement.
  """
  src = path.read_text()
  for node in ast.walk(_tree(path)):
    if isinstance(node, ast.ClassDef) and node.name == cls:
      for fn in node.body:
        if isinstance(fn, ast.FunctionDef) and fn.name == method:
          for stmt in ast.walk(fn):
            if isinstance(stmt, ast.stmt) and stmt is not fn:
              text = textwrap.dedent(ast.get_source_segment(src, stmt, padded=True) or "")
              if text.startswith(starts):
                return text
  raise KeyError(f"{path}: no statement starting {starts!r} in {cls}.{method}")


def line(path: pathlib.Path, number: int) -> str:
  """Line ``number`` (1-based) of ``path``."""
  return path.read_text().splitlines()[number - 1]
