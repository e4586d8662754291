"""Where metrics go: the console (absl + stdout), ``metrics.jsonl`` and TensorBoard.

Only the main process (``distributed.is_main_process``) writes; the others'
writer is inactive, so every process may call it. The work directory may be a URL
(``gs://bucket/run``): objects cannot be appended to, so there ``metrics.jsonl`` is
kept in memory (the existing object read at start) and rewritten at most every
``flush_every_s`` seconds and on close; TensorBoard event files are written through
``epath`` the same way (a tensorboardX writer factory for the URL's scheme).

An object store that fails a write after its client's own retries (gcsfs: 6 tries with
backoff on 429 / 5xx / resets) loses no line: the whole text stays in memory, a warning
says so, and the next flush (or the one at close, tried 5 times)
rewrites it all; TensorBoard's event object likewise.
"""

from __future__ import annotations

import io
import json
import os
import time
from typing import Callable

from absl import logging

from neo_jax.core import paths
from neo_jax.train import distributed


def _rewrite(write: Callable[[], None], what: str, tries: int = 1, wait_s: float = 2.0) -> bool:
  """``write()``; on an error logs a warning (the caller keeps the text) and returns False
  after ``tries`` attempts ``wait_s`` [s] apart."""
  for i in range(tries):
    try:
      write()
      return True
    except Exception as e:  # pylint: disable=broad-except  (any client error: retry later)
      logging.warning("Could not write %s (%s: %s); the lines are kept and written at the "
                      "next flush.", what, type(e).__name__, str(e)[:300])
      if i + 1 < tries:
        time.sleep(wait_s)
  return False


class _ObjectLog:
  """A text log that lives in a local file (appended) or an object (rewritten)."""

  def __init__(self, path: str, flush_every_s: float):
    self.path, self.remote = path, paths.is_url(path)
    self.flush_every_s, self.t_flush = flush_every_s, 0.0
    if self.remote:
      p = paths.resolve(path)
      self.text = [p.read_text()] if p.exists() else []
      self.dirty = False
    else:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      self.file = open(path, "a")

  def write(self, line: str) -> None:
    if self.remote:
      self.text.append(line)
      self.dirty = True
      if time.monotonic() - self.t_flush >= self.flush_every_s:
        self.flush()
    else:
      self.file.write(line)
      self.file.flush()

  def flush(self, tries: int = 1) -> None:
    if self.remote and self.dirty:
      text = "".join(self.text)
      self.t_flush = time.monotonic()
      if _rewrite(lambda: paths.resolve(self.path).write_text(text), self.path, tries):
        self.dirty = False

  def close(self, tries: int = 5) -> None:
    if self.remote:
      self.flush(tries)
    else:
      self.file.close()


class _EpathRecordWriter:
  """tensorboardX record writer for URLs: buffers the event file, rewrites the object."""

  def __init__(self, path: str):
    self.path, self.buffer = path, io.BytesIO()

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self, tries: int = 1) -> None:
    data = self.buffer.getvalue()
    _rewrite(lambda: paths.resolve(self.path).write_bytes(data), self.path, tries)

  def close(self) -> None:
    self.flush(tries=5)


class _EpathWriterFactory:
  def open(self, path):
    return _EpathRecordWriter(path)

  def directory_check(self, path):
    del path  # object stores have no directories


def _register_tensorboard_scheme(path: str) -> None:
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  record_writer.register_writer_factory(path.split(":", 1)[0], _EpathWriterFactory())


class MetricWriter:
  """Console + ``{workdir}/metrics.jsonl`` + TensorBoard events in ``{workdir}/tb``.

  ``write(step, metrics, prefix)`` logs one line ``[prefix] step N k=v ...`` and
  appends ``{"step": N, "kind": prefix, ...}`` to the JSONL log; numeric values
  become TensorBoard scalars ``prefix/key``.
  """

  def __init__(self, workdir: str, enabled: bool = True, flush_every_s: float = 30.0):
    self.active = distributed.is_main_process()
    self.tb = None
    self.jsonl = None
    if self.active:
      self.jsonl = _ObjectLog(paths.join(workdir, "metrics.jsonl"), flush_every_s)
      if enabled:
        tb_dir = paths.join(workdir, "tb")
        if paths.is_url(tb_dir):
          _register_tensorboard_scheme(tb_dir)
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self.tb = SummaryWriter(tb_dir, flush_secs=int(flush_every_s))

  def write(self, step: int, metrics: dict, prefix: str = "train") -> None:
    if not self.active:
      return
    text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in metrics.items())
    logging.info("[%s] step %d %s", prefix, step, text)
    print(f"[{prefix}] step {step} {text}", flush=True)
    self.jsonl.write(json.dumps({"step": step, "kind": prefix, **metrics}) + "\n")
    if self.tb is not None:
      for k, v in metrics.items():
        if isinstance(v, (int, float)):
          self.tb.add_scalar(f"{prefix}/{k}", v, step)

  def write_run_info(self, step: int, info: dict) -> None:
    """One ``{"step": step, "kind": "run", ...}`` record at the start of a run (e.g.
    the MFU peak and where it came from), also printed."""
    if not self.active:
      return
    print(f"[run] step {step} " + " ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    self.jsonl.write(json.dumps({"step": step, "kind": "run", **info}) + "\n")

  def flush(self) -> None:
    """Writes out what is buffered (before a checkpoint, so metrics and state agree)."""
    if self.jsonl:
      self.jsonl.flush()
    if self.tb:
      self.tb.flush()

  def close(self):
    if self.jsonl:
      self.jsonl.close()
    if self.tb:
      self.tb.close()
