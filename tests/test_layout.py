"""The package's layering, read from the source: no import cycle, ``data/`` never
imports ``model/``, ``core/`` imports nothing else of neo_jax, files stay small; every
package names its public API (``__all__``) and importing a package imports no JAX;
and the repository stands alone: no file refers to a path outside it, and every
``docs/design.md §N`` cited is a section of that document; the model reads its typed
config's fields, never ``config.get(name, default)``.

Every ``import`` statement counts, also the ones inside functions (a deferred
import still ties the two modules together)."""

from __future__ import annotations

import ast
import importlib
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "neo_jax"
MAX_LINES = 400
DESIGN = ROOT / "docs" / "design.md"
# Places outside the repository that no file may name: the design note that used to live
# beside the checkout (now docs/design.md), the machine's work tree, the release
# extraction and mirror of the machine that built the project (a developer extracts the
# release anywhere, tests/testlib/release.py). Split so that this file names none of them.
OUTSIDE = ("../" "shared", "NEO" "_SPEC", "/" "work/", "/tmp/" "neo_release", ".mirror" "/")
_SEC = r"\d+(?:\.\d+)*"
_CHAIN = rf"§{_SEC}(?:(?:,\s*|\s+and\s+|\s*/\s*)§{_SEC})*"
# "docs/design.md §1.3 / §1.4", "docs/design.md (§1, §5)".
_DESIGN_CITE = re.compile(rf"docs/design\.md`?\s*\(?({_CHAIN})")
_HEADING = re.compile(rf"^#{{2,4}}\s+({_SEC})\.?\s", re.M)


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


# Names the model config goes by inside ``neo_jax/model/`` (``self.config``, ``cfg``, ...).
_CONFIG_NAMES = re.compile(r"(^|\.)(cfg|config|c|model_cfg|mcfg|model_config)$")


def _config_gets(rel: str, text: str) -> list[str]:
  """``X.get(...)`` calls on a model config in ``text`` (``X`` one of ``_CONFIG_NAMES``)."""
  return [f"{rel}:{node.lineno}: {ast.unparse(node)}" for node in ast.walk(ast.parse(text))
          if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr == "get" and _CONFIG_NAMES.search(ast.unparse(node.func.value))]


def test_the_config_get_finder_finds_a_planted_get():
  text = ("m = cfg.get('max_visual_tokens', 0)\nr = self.config.get('rope_mode')\n"
          "ok = batch.get('x')\nalso_ok = cfg.rope_mode\n")
  assert _config_gets("x.py", text) == ["x.py:1: cfg.get('max_visual_tokens', 0)",
                                        "x.py:2: self.config.get('rope_mode')"]


def test_the_model_reads_typed_config_fields():
  """Inside ``neo_jax/model/`` the config is a ``ModelConfig``: fields are attributes with
  their defaults in one place, never ``config.get(name, default)``."""
  found = [g for p in sorted((PKG / "model").rglob("*.py"))
           for g in _config_gets(str(p.relative_to(ROOT)), p.read_text())]
  assert not found, "model config read with .get():\n" + "\n".join(found)


def _repo_text_files():
  """``(path relative to the root, text)`` of every tracked text file (``git ls-files``;
  outside a git checkout, every file not under a hidden folder or ``__pycache__``)."""
  try:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                         check=True).stdout.decode()
    rels = [r for r in out.split("\0") if r]
  except (OSError, subprocess.CalledProcessError):
    rels = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
            and not any(part.startswith(".") or part == "__pycache__"
                        for part in p.relative_to(ROOT).parts)]
  for rel in rels:
    try:
      yield rel, (ROOT / rel).read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
      continue  # binary files (plots), files deleted in the work tree


def _outside_references(rel: str, text: str) -> list[str]:
  return [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
          if any(o in line for o in OUTSIDE)]


def _design_sections() -> set[str]:
  return set(_HEADING.findall(DESIGN.read_text(encoding="utf-8")))


def _missing_sections(rel: str, text: str, sections: set[str]) -> list[str]:
  """Citations ``docs/design.md §N`` in ``text`` whose ``N`` is no section heading; in
  the design document itself also its bare ``§N`` (those after ``BUILD_NOTES`` cite that
  file's sections)."""
  found = [(m.start(), m.group(1)) for m in _DESIGN_CITE.finditer(text)]
  if rel == "docs/design.md":
    # BUILD_NOTES sections carry letters (§0i); a chain after "BUILD_NOTES" is theirs.
    any_sec = rf"§{_SEC}[a-z]?"
    found += [(m.start(), m.group(0)) for m in
              re.finditer(rf"{any_sec}(?:(?:,\s*|\s+and\s+|\s*/\s*){any_sec})*", text)
              if not re.search(r"BUILD_NOTES(\.md)?\s*$", text[max(0, m.start() - 20):m.start()])]
  return [f"{rel}:{text.count(chr(10), 0, pos) + 1}: §{sec}{letter}"
          for pos, chain in found for sec, letter in re.findall(rf"§({_SEC})([a-z]?)", chain)
          if letter or sec not in sections]


def test_the_reference_finders_find_planted_references():
  assert _outside_references("x.py", "ok\nsee ../" "shared/x.md\n") == \
      ["x.py:2: see ../" "shared/x.md"]
  sections = {"1", "1.4"}
  doc = "docs/design" ".md"  # split: this file's own citations must exist
  text = f"{doc} §1.4 / §1.5 and {doc} (§1, §9)\n"
  assert _missing_sections("a.py", text, sections) == ["a.py:1: §1.5", "a.py:1: §9"]
  assert _missing_sections("docs/design.md", "§1.4, BUILD_NOTES §0b, §0i; §2.1, §0i\n",
                          sections) == ["docs/design.md:1: §2.1", "docs/design.md:1: §0i"]


def test_nothing_refers_outside_the_repository():
  found = [r for rel, text in _repo_text_files() for r in _outside_references(rel, text)]
  assert not found, "references to paths outside the repository:\n" + "\n".join(found)


def test_design_citations_name_existing_sections():
  sections = _design_sections()
  assert {"1.4", "3.6", "7.6"} <= sections, sorted(sections)  # the headings parse
  bad = [m for rel, text in _repo_text_files() for m in _missing_sections(rel, text, sections)]
  assert not bad, "docs/design.md sections cited but missing:\n" + "\n".join(bad)


def _packages() -> list[str]:
  return sorted(_module_name(p.parent) for p in PKG.rglob("__init__.py"))


@pytest.mark.parametrize("package", _packages())
def test_every_package_names_its_api(package):
  """``__all__`` lists what users call; every name resolves, and none hides a submodule
  of the same name (``from pkg import mod`` must still give the module)."""
  pkg = importlib.import_module(package)
  names = getattr(pkg, "__all__", None)
  assert names, f"{package}/__init__.py has no __all__"
  folder = PKG.joinpath(*package.split(".")[1:])
  submodules = {p.stem for p in folder.glob("*.py")} | {p.parent.name for p in
                                                         folder.glob("*/__init__.py")}
  for name in names:
    value = getattr(pkg, name)
    if name in submodules:
      assert value is sys.modules[f"{package}.{name}"], f"{package}.{name} hides its module"


def test_importing_the_packages_imports_no_jax():
  """The package ``__init__``s load their names on first use: the CLIs import
  ``neo_jax.platform`` and ``neo_jax.configs`` before JAX, and ``import neo_jax.core``
  costs nothing."""
  code = (f"import {', '.join(_packages())}; import sys; "
          "print(sorted(m for m in ('jax', 'flax', 'numpy', 'orbax', 'grain', 'torch', "
          "'ml_collections', 'etils') if m in sys.modules))")
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                     check=True)
  assert r.stdout.strip() == "[]", r.stdout
