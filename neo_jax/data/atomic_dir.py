"""Publishing a generated cache folder atomically (the embedded datasets' caches).

A builder writes everything into a temporary sibling folder, then ``publish`` marks it
complete and renames it into place, so a reader never sees a half-built cache and
processes that build the same cache at once do not corrupt each other.
"""

from __future__ import annotations

import os
import shutil


def publish(tmp: str, root: str, version: str) -> None:
  """Writes ``{tmp}/DONE`` (holding ``version``) and renames ``tmp`` to ``root``.

  Args:
    tmp: the fully written temporary folder (same filesystem as ``root``).
    root: the cache folder's final path.
    version: the cache format's version string, written into ``DONE``.

  Raises:
    OSError: the rename failed and no other process has published ``root``. When
      another process won the race (``root/DONE`` exists), ``tmp`` is removed instead.
  """
  with open(os.path.join(tmp, "DONE"), "w", encoding="utf-8") as f:
    f.write(version + "\n")
  try:
    os.rename(tmp, root)
  except OSError:  # Another process finished first.
    if not os.path.exists(os.path.join(root, "DONE")):
      raise
    shutil.rmtree(tmp, ignore_errors=True)
