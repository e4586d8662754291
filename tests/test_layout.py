"""The package's layering, read from the source: no import cycle, ``data/`` never
imports ``model/``, ``core/`` imports nothing else of neo_jax, files stay small.

Every ``import`` statement counts, also the ones inside functions (a deferred
import still ties the two modules together)."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "neo_jax"
MAX_LINES = 400


def _module_name(path: pathlib.Path) -> str:
  rel = path.relative_to(ROOT).with_suffix("")
  parts = list(rel.parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(path: pathlib.Path, modules: dict) -> set[str]:
  """neo_jax modules imported anywhere in ``path``."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # ``from pkg import mod`` imports ``pkg.mod`` when that is a module.
      names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
               else node.module for a in node.names]
    else:
      continue
    out.update(n for n in names if n.split(".")[0] == "neo_jax")
  return {n for n in out if n in modules}


def _graph():
  modules = _modules()
  return {m: _imports(p, modules) for m, p in modules.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as a list of modules, or None (iterative DFS, three colours)."""
  colour = dict.fromkeys(graph, 0)
  for root in graph:
    if colour[root]:
      continue
    stack = [(root, iter(sorted(graph[root])))]
    path = [root]
    colour[root] = 1
    while stack:
      node, it = stack[-1]
      nxt = next(it, None)
      if nxt is None:
        colour[node] = 2
        stack.pop()
        path.pop()
        continue
      if nxt == node or nxt not in graph:
        continue
      if colour[nxt] == 1:
        return path[path.index(nxt):] + [nxt]
      if colour[nxt] == 0:
        colour[nxt] = 1
        stack.append((nxt, iter(sorted(graph[nxt]))))
        path.append(nxt)
  return None


def test_cycle_finder_finds_a_planted_cycle():
  g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  cycle = _find_cycle(g)
  assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
  assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_walker_sees_deferred_imports():
  graph = _graph()
  # ``attention.py`` imports ``flash_mixed`` at the top, ``trainer.py`` imports
  # ``evaluate`` inside a function: both edges must be seen.
  assert "neo_jax.ops.flash_mixed" in graph["neo_jax.ops.attention"]
  assert "neo_jax.train.evaluate" in graph["neo_jax.train.trainer"]


def test_no_import_cycle():
  cycle = _find_cycle(_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_data_never_imports_model():
  bad = {m: sorted(d for d in deps if d.startswith("neo_jax.model"))
         for m, deps in _graph().items() if m.startswith("neo_jax.data")}
  assert not {m: d for m, d in bad.items() if d}, bad


def test_core_imports_only_core():
  bad = {m: sorted(d for d in deps if not d.startswith("neo_jax.core"))
         for m, deps in _graph().items() if m.startswith("neo_jax.core")}
  assert not {m: d for m, d in bad.items() if d}, bad


@pytest.mark.parametrize("kernel", ["neo_jax.ops.flash_mixed_tpu", "neo_jax.ops.flash_mixed_gpu"])
def test_kernel_modules_do_not_import_each_other(kernel):
  other = {"neo_jax.ops.flash_mixed_tpu", "neo_jax.ops.flash_mixed_gpu"} - {kernel}
  assert not (_graph()[kernel] & other)


def test_no_file_over_the_line_limit():
  long = {str(p.relative_to(ROOT)): n for p in PKG.rglob("*.py")
          if (n := len(p.read_text().splitlines())) > MAX_LINES}
  assert not long, f"files over {MAX_LINES} lines: {long}"
