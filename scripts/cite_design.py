"""Rewrites citations of the former external design note into ``docs/design.md`` citations.

The design the code cites used to live in a file outside the repository; its sections
are now ``docs/design.md``, whose numbering keeps the old section numbers and adds finer
ones. This script rewrites every citation of the old note in the tracked files, touching
only the citation text. Run from the repository root::

    python scripts/cite_design.py            # rewrite, print what changed
    python scripts/cite_design.py --check    # change nothing; exit 1 if anything would

It exits 1 when a reference to the old note remains that no rule understands (each one
printed with its file and line), so a merge that brings new citations is swept by running
it again. ``tests/test_layout.py`` checks the result: no tracked file refers to a path
outside the repository, and every ``docs/design.md §N`` cited is a section heading.

Section mapping (old -> ``docs/design.md``): the same number, except where the line shows
that a finer section is meant:

* §1.4 about generation (the file is under ``neo_jax/infer/``, or the line speaks of
  inference, generated tokens or ``max t + 1``) -> §1.7 (positions and mask at inference);
* §3.5 followed by "performance", or cited for the gather "before the LM head" -> §3.6;
* §4 cited for stage 1 (or a ``stage1`` set) -> §4.3; for the 2 : 4 : 1 : 1 mixture or
  stage 2 -> §4.1;
* §5 cited for ``config.json`` -> §5.2; for state-dict keys / names -> §5.3;
* "the old note's preamble" -> §0; "its ... id" / "ids are not the old note's" -> §3.1;
  "are <old> §N's" -> "are those of docs/design.md §N".
"""

from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import sys

OLD = "NEO" "_SPEC"  # the old note's name, split so that this file does not cite it
NEW = "docs/design.md"
SELF = "scripts/cite_design.py"

_SEC = r"\d+(?:\.\d+)*"


def _line_at(text: str, pos: int) -> str:
  start = text.rfind("\n", 0, pos) + 1
  end = text.find("\n", pos)
  return text[start:] if end < 0 else text[start:end]


def target(section: str, line: str, path: str, after: str) -> str:
  """The ``docs/design.md`` section for an old citation of ``section`` (module docstring).

  Args:
    section: the old section number, e.g. "1.4".
    line: the whole source line holding the citation (its context).
    path: the file's path relative to the repository root.
    after: the text right after the cited section number.
  """
  low = line.lower()
  if section == "1.4" and (path.startswith("neo_jax/infer/") or "inference" in low
                           or "generated" in low or "max t + 1" in low):
    return "1.7"
  if section == "3.5" and (after.lstrip().startswith("performance")
                           or "before the lm head" in low):
    return "3.6"
  if section == "4":
    if re.search(r"stage[ -]?1\b", low):
      return "4.3"
    if "2 : 4 : 1 : 1" in line or "stage 2" in low:
      return "4.1"
  if section == "5":
    if "config.json" in low:
      return "5.2"
    if re.search(r"\bkeys?\b|state[- ]dict", low):
      return "5.3"
  return section


def rewrite(text: str, path: str) -> tuple[str, list[str]]:
  """``text`` with its old citations rewritten, and one log line per rewrite."""
  log: list[str] = []

  def sub(pattern: str, repl, s: str) -> str:
    """``re.sub`` that logs; a callable ``repl`` gets the match and the text ``s``."""
    def one(m):
      new = repl(m, s) if callable(repl) else repl
      log.append(f"{path}:{s.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r} -> {new!r}")
      return new
    return re.sub(pattern, one, s)

  def cite(m, s):
    """``OLD §1.3 / §1.4``, ``OLD §3.2, §4``, ``OLD 3.1`` -> the new sections."""
    line, after = _line_at(s, m.start()), s[m.end():m.end() + 20]
    chain = m.group(0)[len(OLD) + 1:]
    if not chain.startswith("§"):
      return f"{NEW} §{target(chain, line, path, after)}"
    return NEW + " " + re.sub(rf"§({_SEC})",
                              lambda c: "§" + target(c.group(1), line, path, after), chain)

  # References to the old note's path (README / BUILD_NOTES style).
  text = sub(r"`(?:\.\./)?shared/" + OLD + r"\.md`", f"`{NEW}`", text)
  text = sub(r"(?:\.\./)?shared/" + OLD + r"\.md", NEW, text)
  # Phrases that name no section but mean one.
  text = sub(OLD + r" preamble", f"{NEW} §0", text)
  text = sub(r"are not " + OLD + r"'s", f"are not those of {NEW} §3.1", text)
  text = sub(rf"are {OLD} §({_SEC})'s", lambda m, s: f"are those of {NEW} §{m.group(1)}", text)
  text = sub(r"\bits " + OLD + r" id\b", f"its {NEW} §3.1 id", text)
  # Section citations, single or chained, with or without the "§".
  text = sub(rf"{OLD} (?:§{_SEC}(?:(?:,\s*|\s+and\s+|\s*/\s*)§{_SEC})*|{_SEC}\b)", cite, text)
  # Any other mention names the document as a whole ("written from OLD alone",
  # "written from OLD (§1, §5)").
  text = sub(OLD + r"\b", NEW, text)
  return text, log


def tracked_files(root: pathlib.Path) -> list[str]:
  out = subprocess.run(["git", "ls-files", "-z"], cwd=root, check=True,
                       capture_output=True).stdout.decode()
  return [p for p in out.split("\0") if p and p != SELF]


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a rewrite is due")
  args = ap.parse_args(argv)
  root = pathlib.Path(__file__).resolve().parents[1]
  due, left = 0, []
  for rel in tracked_files(root):
    path = root / rel
    try:
      text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError):
      continue  # binary files, submodules, files deleted in the work tree
    if OLD not in text:
      continue
    new, log = rewrite(text, rel)
    for line in log:
      print(line)
    if new != text:
      due += 1
      if not args.check:
        path.write_text(new, encoding="utf-8")
    for i, line in enumerate(new.splitlines(), 1):
      if OLD in line:
        left.append(f"{rel}:{i}: {line.strip()}")
  for line in left:
    print("not rewritten:", line, file=sys.stderr)
  print(f"{due} file(s) {'to rewrite' if args.check else 'rewritten'}; "
        f"{len(left)} reference(s) left", file=sys.stderr)
  return 1 if left or (args.check and due) else 0


if __name__ == "__main__":
  sys.exit(main())
