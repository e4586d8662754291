"""Paths that may be URLs (``gs://bucket/run``) or local, through ``etils.epath``.

Every file the project reads or writes for a user (work directory, checkpoints,
metrics, TensorBoard events, data annotations and media, conversion sources and
destinations) goes through these helpers, so a ``gs://`` work directory lives in the
bucket and nothing lands on the VM's disk. ``epath`` serves ``gs://`` through
``gcsfs`` (honouring ``STORAGE_EMULATOR_HOST``); Orbax writes its own arrays through
tensorstore (``TENSORSTORE_GCS_HTTP_URL`` for an emulator).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile

from etils import epath

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(path) -> bool:
  """True for ``scheme://...`` paths (``gs://``, ``s3://``, ...)."""
  return bool(_URL.match(os.fspath(path)))


def resolve(path) -> epath.Path:
  """An ``epath.Path``; local paths made absolute (Orbax requires it), URLs as given."""
  path = os.fspath(path)
  return epath.Path(path if is_url(path) else os.path.abspath(os.path.expanduser(path)))


def join(root, *parts) -> str:
  """``root / parts`` as a string, for a URL or a local root."""
  return os.fspath(epath.Path(os.fspath(root)).joinpath(*parts))


def read_text(path) -> str:
  """The text of a local file or an object."""
  return resolve(path).read_text()


def read_bytes(path) -> bytes:
  """The bytes of a local file or an object."""
  return resolve(path).read_bytes()


def write_text(path, text: str) -> None:
  """Writes (replaces) a local file or an object, creating local parents."""
  p = resolve(path)
  if not is_url(os.fspath(p)):
    p.parent.mkdir(parents=True, exist_ok=True)
  p.write_text(text)


def exists(path) -> bool:
  return resolve(path).exists()


def _files(root) -> list[str]:
  """Relative paths of every file under ``root`` (a local folder or a URL prefix)."""
  root = resolve(root)
  if not is_url(os.fspath(root)):
    base = os.fspath(root)
    return [os.path.relpath(os.path.join(d, f), base) for d, _, files in os.walk(base)
            for f in files]
  out, stack = [], [(root, "")]
  while stack:                           # one listing per folder (no ``**`` globs on GCS)
    folder, rel = stack.pop()
    for child in folder.iterdir():
      name = f"{rel}{child.name}"
      if child.is_dir():
        stack.append((child, name + "/"))
      else:
        out.append(name)
  return out


def copy_tree(src, dst) -> int:
  """Copies every file under ``src`` to the same relative path under ``dst`` (either
  may be a URL), 16 MiB at a time (a 5 GB safetensors shard is never held in memory);
  returns the number of files."""
  names = _files(src)
  for rel in names:
    out = resolve(join(dst, rel))
    if not is_url(os.fspath(out)):
      out.parent.mkdir(parents=True, exist_ok=True)
    with resolve(join(src, rel)).open("rb") as fin, out.open("wb") as fout:
      shutil.copyfileobj(fin, fout, 16 * 2 ** 20)
  return len(names)


@contextlib.contextmanager
def local_input(path):
  """A local folder holding ``path``'s files: ``path`` itself, or for a URL a
  temporary download (libraries that need files: safetensors, tokenizers)."""
  if not is_url(path):
    yield os.fspath(resolve(path))
    return
  with tempfile.TemporaryDirectory(prefix="neo_jax_in_") as tmp:
    copy_tree(path, tmp)
    yield tmp


@contextlib.contextmanager
def local_output(path):
  """A local folder to write ``path``'s files into: ``path`` itself, or for a URL a
  temporary folder uploaded to it on success."""
  if not is_url(path):
    yield os.fspath(resolve(path))
    return
  with tempfile.TemporaryDirectory(prefix="neo_jax_out_") as tmp:
    yield tmp
    copy_tree(tmp, path)
