"""Packing per-sample dicts into static ``[batch, seq_len]`` batches (docs/design.md §3.5).

``PackIterDataset`` consumes the per-sample dicts of ``processor.py`` (and
their skip markers) and yields batches in the layout of
``neo_jax.core.batch``. Per batch it fills ``batch_size`` bins with first-fit
or best-fit under up to three capacities: ``seq_len`` tokens and, optionally,
``max_supervised_tokens`` supervised positions (positions i with
``labels[i + 1] != -100``; the model gathers that many before the LM head) and
``max_visual_tokens`` visual tokens (the patch embedder's gather).
A sample that does not fit any open bin waits (FIFO) for the next batch, whose
bins it enters first; the batch is emitted once ``max_waiting`` samples wait
(or the input ends), or once the waiting samples hold ``max_waiting_bytes``. A sample
larger than an empty bin, or than ``max_sample_tokens``, is dropped and counted, never
cut (the processor fits samples to these limits first: ``fitting.py``). Every record
pulled is reported to a ``source_stats.SourceMonitor`` (per-source counts, the
starvation stop, rate-limited skip logs).

Checkpointing: between batches all bins are empty, so the state is the
parent's state before the oldest waiting sample plus one letter per sample
pulled since then ("W" waiting, "D" done: packed or dropped). Restoring
re-pulls those samples and keeps the waiting ones, so a resumed run yields
exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from typing import Any

import grain
import numpy as np

from neo_jax.core import batch as batch_lib
from neo_jax.core import geometry, host_memory, tokens
from neo_jax.data import prefetch
from neo_jax.data import source_stats

log = logging.getLogger(__name__)

ALGORITHMS = ("first_fit", "best_fit")
TRIM_EVERY_S = 10.0  # [s] between returns of freed host memory to the OS


@dataclasses.dataclass(frozen=True)
class PackOptions:
  """Packing parameters.

  seq_len: [tokens] per packed sequence; batch_size: sequences per batch.
  max_supervised_tokens: supervised-position capacity per sequence, 0 = none.
  max_sample_tokens: [tokens] the longest sample kept, 0 = ``seq_len`` (longer ones are
    dropped and counted as ``too_long``; the TPU attention kernel sizes its grid by it).
  max_visual_tokens: visual-token capacity per sequence (the patch embedder's static
    gather, ``model.max_visual_tokens``), 0 = none.
  algorithm: "first_fit" | "best_fit" (bin choice for each sample).
  max_waiting: samples that may wait for the next batch before the current
    batch is emitted (higher = denser packing, longer replay on restore).
  max_waiting_bytes: [bytes] the same bound on the waiting samples' arrays, 0 = none.
  monitor: per-source starvation stop and skip logging.
  pad_id: input id of padding (``<|endoftext|>``).
  img_context_id: id whose positions receive the sample's visual tokens.
  patch_size: [pixels] side of a patch (16).
  """
  seq_len: int
  batch_size: int
  max_supervised_tokens: int = 0
  max_sample_tokens: int = 0
  max_visual_tokens: int = 0
  algorithm: str = "first_fit"
  max_waiting: int = 16
  max_waiting_bytes: int = 0
  monitor: source_stats.MonitorOptions = source_stats.MonitorOptions()
  pad_id: int = tokens.PAD_TOKEN_ID
  img_context_id: int = tokens.IMG_CONTEXT_TOKEN_ID
  patch_size: int = geometry.PATCH_SIZE

  def __post_init__(self):
    if self.algorithm not in ALGORITHMS:
      raise ValueError(f"packing algorithm {self.algorithm!r} is not one of {ALGORITHMS}.")
    if self.seq_len <= 0 or self.batch_size <= 0 or self.max_waiting <= 0:
      raise ValueError(f"bad PackOptions {self}.")
    if self.max_waiting_bytes < 0:
      raise ValueError(f"max_waiting_bytes={self.max_waiting_bytes} must be >= 0 (0 = none).")
    if self.max_sample_tokens < 0:
      raise ValueError(f"max_sample_tokens={self.max_sample_tokens} must be >= 0 (0 = seq_len).")


class PackIterDataset(grain.IterDataset):
  """Packs + batches a stream of per-sample dicts (see module docstring)."""

  def __init__(self, parent: grain.IterDataset, opts: PackOptions):
    super().__init__(parent)
    self._opts = opts

  def __iter__(self) -> "PackDatasetIterator":
    return PackDatasetIterator(self._parent.__iter__(), self._opts)

  def __str__(self) -> str:
    return f"PackIterDataset({self._opts})"


class PackDatasetIterator(grain.DatasetIterator):
  """Iterator of ``PackIterDataset``; ``stats()`` gives skip and fill counts."""

  def __init__(self, parent: grain.DatasetIterator, opts: PackOptions):
    super().__init__(parent)
    self._opts = opts
    self._counts: collections.Counter = collections.Counter()
    self._snapshot = parent.get_state()
    self._log: list[str] = []  # One letter per sample pulled since the snapshot.
    self._waiting: collections.deque = collections.deque()  # (log index, pre-state, sample)
    self._waiting_bytes = 0
    self._exhausted = False
    self._monitor = source_stats.SourceMonitor(opts.monitor)
    self._last_trim = time.monotonic()

  # -- capacity helpers
  def _too_big(self, el: dict) -> str | None:
    if len(el["input_ids"]) > min(self._opts.seq_len,
                                  self._opts.max_sample_tokens or self._opts.seq_len):
      return "too_long"
    if self._opts.max_supervised_tokens and el["num_supervised"] > self._opts.max_supervised_tokens:
      return "too_many_supervised"
    if self._opts.max_visual_tokens and len(el["pixel_values"]) > self._opts.max_visual_tokens:
      return "too_many_visual"
    return None

  def _place(self, el: dict, used: list[list[int]]) -> int:
    """Bin index for ``el`` or -1; ``used[b] = [tokens, supervised, visual]``."""
    n, sup, vis = len(el["input_ids"]), el["num_supervised"], len(el["pixel_values"])
    cap, cap_sup = self._opts.seq_len, self._opts.max_supervised_tokens
    cap_vis = self._opts.max_visual_tokens
    best, best_room = -1, None
    for b, (u, v, w) in enumerate(used):
      if u + n > cap or (cap_sup and v + sup > cap_sup) or (cap_vis and w + vis > cap_vis):
        continue
      if self._opts.algorithm == "first_fit":
        return b
      room = cap - u - n
      if best_room is None or room < best_room:
        best, best_room = b, room
    return best

  def _pull(self):
    pre = self._parent.get_state()
    el = next(self._parent)
    self._log.append("D")
    return len(self._log) - 1, pre, el

  def __next__(self) -> dict[str, np.ndarray]:
    opts = self._opts
    bins: list[list[dict]] = [[] for _ in range(opts.batch_size)]
    used = [[0, 0, 0] for _ in range(opts.batch_size)]

    def put(b, el):
      bins[b].append(el)
      used[b][0] += len(el["input_ids"])
      used[b][1] += el["num_supervised"]
      used[b][2] += len(el["pixel_values"])

    still_waiting = collections.deque()
    for item in self._waiting:
      b = self._place(item[2], used)
      if b >= 0:
        put(b, item[2])
        self._log[item[0]] = "D"
        self._waiting_bytes -= prefetch.nbytes(item[2])
      else:
        still_waiting.append(item)
    self._waiting = still_waiting
    while (len(self._waiting) < opts.max_waiting and not self._exhausted
           and (not opts.max_waiting_bytes or self._waiting_bytes < opts.max_waiting_bytes)):
      try:
        i, pre, el = self._pull()
      except StopIteration:
        self._exhausted = True
        break
      src = el.get("source", "")
      if "skip" in el:
        self._count_skip(src, el["skip"], el.get("record_id"), el.get("detail", ""))
        continue
      reason = self._too_big(el)
      if reason:
        self._count_skip(src, reason, el.get("record_id"),
                         f"{len(el['input_ids'])} tokens, {el['num_supervised']} supervised, "
                         f"{len(el['pixel_values'])} visual")
        continue
      if el.get("fitted"):
        self._counts["fit/" + el["fitted"]] += 1
      if el.get("skipped_turns"):  # turns with an unknown role, dropped as the release does
        self._counts["skipped_turns"] += int(el["skipped_turns"])
      self._monitor.kept(src, len(el["input_ids"]), len(el["pixel_values"]), el.get("fitted", ""))
      b = self._place(el, used)
      if b >= 0:
        put(b, el)
      else:
        self._log[i] = "W"
        self._waiting.append((i, pre, el))
        self._waiting_bytes += prefetch.nbytes(el)
    if not any(bins):
      raise StopIteration
    batch = batch_lib.assemble_batch(bins, opts.seq_len, pad_id=opts.pad_id,
                                     img_context_id=opts.img_context_id,
                                     patch_size=opts.patch_size)
    self._counts["batches"] += 1
    self._counts["samples"] += sum(len(x) for x in bins)
    self._counts["tokens"] += int(sum(u[0] for u in used))
    self._counts["capacity"] += opts.batch_size * opts.seq_len
    self._advance_snapshot()
    self._trim_host_memory()
    return batch

  def _trim_host_memory(self) -> None:
    """Gives freed host memory back to the OS at most every ``TRIM_EVERY_S`` seconds.

    Samples of a few KB to ~50 MB are allocated and freed in several threads; glibc
    keeps what is freed in per-thread arenas (and raises its mmap threshold after each
    large free, so later large arrays come from the arenas too), and the resident set
    creeps up although the pipeline holds a bounded number of bytes (measured:
    ``bench/input_memory.py``, BUILD_NOTES.md §0j). ``malloc_trim`` returns the free
    pages of every arena."""
    now = time.monotonic()
    if now - self._last_trim >= TRIM_EVERY_S:
      self._last_trim = now
      host_memory.release_host_memory(collect=False)

  def _count_skip(self, source: str, reason: str, record_id: Any, detail: str) -> None:
    self._counts["skip/" + reason] += 1
    self._monitor.skipped(source, reason, record_id, detail)  # logs; may raise (starving)

  def _advance_snapshot(self) -> None:
    if not self._waiting:
      self._snapshot = self._parent.get_state()
      self._log = []
      return
    j0, pre0, _ = self._waiting[0]
    self._snapshot = pre0
    self._log = self._log[j0:]
    self._waiting = collections.deque((i - j0, p, el) for i, p, el in self._waiting)

  def stats(self) -> dict[str, int]:
    """Counters: ``skip/<reason>``, ``fit/<kind>`` (``frames`` | ``pixels``),
    ``batches``, ``samples``, ``tokens`` (non-padding), ``capacity`` (all positions),
    and per source ``source/<name>/...`` (``SourceMonitor.counts``)."""
    out = dict(self._counts)
    out.update({"source/" + k: v for k, v in self._monitor.counts().items()})
    return out

  @property
  def monitor(self) -> source_stats.SourceMonitor:
    """The per-source accounting (``summary()`` for the data audit)."""
    return self._monitor

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._snapshot, "log": "".join(self._log), "counts": self.stats(),
            "exhausted": int(self._exhausted)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    counts = dict(state["counts"])
    self._monitor.restore({k[len("source/"):]: v for k, v in counts.items()
                           if k.startswith("source/")})
    self._counts = collections.Counter({k: v for k, v in counts.items()
                                        if not k.startswith("source/")})
    self._exhausted = False
    self._log = []
    self._waiting = collections.deque()
    self._waiting_bytes = 0
    for letter in state["log"]:
      i, pre, el = self._pull()
      if letter == "W":
        self._log[i] = "W"
        self._waiting.append((i, pre, el))
        self._waiting_bytes += prefetch.nbytes(el)
    self._snapshot = state["parent"]
