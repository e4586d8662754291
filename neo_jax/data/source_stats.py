"""Per-source accounting of the input pipeline: counts, a starvation stop, skip logs.

The packer tells a ``SourceMonitor`` about every record it pulls: a kept sample
(with its tokens, visual tokens and whether it was fitted) or a skip (with its
reason). The monitor

* counts, per source: records read, samples kept, fitted (by kind), skipped (by
  reason), tokens and visual tokens (``counts()``: flat integer counters the packer
  checkpoints), and keeps the lengths of recent samples for percentiles;
* stops the run with ``SourceStarvedError`` when a source's last
  ``starve_records`` records all were skipped, or its skip rate over the last
  ``skip_rate_window`` records exceeds ``max_skip_rate``: a source that can never
  yield a sample (every video too long, a wrong ``data_path``) would otherwise make
  the packer pull and skip its records forever;
* logs skips without flooding: the first ``log_first`` records of each (source,
  reason) by name, then one line per (source, reason) every ``log_interval_s``
  seconds with the count and an example.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from typing import Any

import numpy as np

from neo_jax.data.errors import SourceStarvedError

log = logging.getLogger("neo_jax.data")

# What to change, per skip reason (the starvation error's last sentence).
ADVICE = {
    "too_long": ("raise seq_len / model.max_sample_tokens, or lower the source's options "
                 "(max_pixels, video_max_pixels, max_frames) or its fitting floors "
                 "(min_pixels, video_min_pixels, min_frames)"),
    "too_many_visual": "raise model.max_visual_tokens or lower the source's pixel options",
    "too_many_supervised": "raise model.max_supervised_tokens",
    "missing_file": ("check the source's data_path (the root of relative media paths) and "
                     "the media paths in its annotations"),
    "corrupt_file": "check the source's media files (they do not decode)",
    "decompression_bomb": "raise the source's options.max_image_pixels if the images are real",
    "aspect_ratio": "drop the records whose images are thinner than 1:200",
    "bad_json": "fix the annotation file (one JSON object per line for .jsonl)",
    "bad_record": "check the records' format (README 'Your own data', data/mixture.py)",
    "image_tag_mismatch": "give each record as many <image> tags as images",
    "empty_conversation": "drop records without conversation turns",
    "no_supervised_token": "give each record an assistant turn with text",
}


@dataclasses.dataclass(frozen=True)
class MonitorOptions:
  """Starvation stop and skip logging (``data.*`` fields of the same names).

  starve_records: a source whose last this many records were all skipped stops the
    run (0 = off).
  max_skip_rate: ... or whose skip rate over the last ``skip_rate_window`` records
    exceeds this (>= 1 = off).
  log_first: skipped records named one by one per (source, reason).
  log_interval_s: [s] then one summary line per (source, reason) this often.
  """
  starve_records: int = 300
  max_skip_rate: float = 0.9
  skip_rate_window: int = 2000
  log_first: int = 3
  log_interval_s: float = 60.0


class SourceMonitor:
  """Counts, starvation checks and rate-limited skip logs (module docstring)."""

  def __init__(self, opts: MonitorOptions = MonitorOptions()):
    self.opts = opts
    self._counts: collections.Counter = collections.Counter()
    self._since_kept: collections.Counter = collections.Counter()
    self._window: dict[str, collections.deque] = {}
    self._lengths: dict[str, collections.deque] = {}
    self._example: dict[tuple[str, str], tuple[str, str]] = {}
    self._logged: collections.Counter = collections.Counter()
    self._pending: collections.Counter = collections.Counter()
    self._last_log: dict[tuple[str, str], float] = {}

  # -- events
  def kept(self, source: str, tokens: int, visual: int, fitted: str = "") -> None:
    """A sample of ``source`` entered a batch (or waits for the next one)."""
    c = self._counts
    c[f"{source}/records"] += 1
    c[f"{source}/kept"] += 1
    c[f"{source}/tokens"] += int(tokens)
    c[f"{source}/visual"] += int(visual)
    if fitted:
      c[f"{source}/fit/{fitted}"] += 1
    self._since_kept[source] = 0
    self._outcome(source, False)
    self._lengths.setdefault(source, collections.deque(maxlen=8192)).append(int(tokens))

  def skipped(self, source: str, reason: str, record_id: Any, detail: str) -> None:
    """A record of ``source`` was skipped.

    Raises:
      SourceStarvedError: the source starves (module docstring).
    """
    self._counts[f"{source}/records"] += 1
    self._counts[f"{source}/skip/{reason}"] += 1
    self._since_kept[source] += 1
    self._example.setdefault((source, reason), (str(record_id), str(detail)))
    self._log_skip(source, reason, record_id, detail)
    rate = self._outcome(source, True)
    o = self.opts
    if o.starve_records and self._since_kept[source] >= o.starve_records:
      self._starved(source, f"yielded no sample in its last {self._since_kept[source]} records",
                    "data.starve_records=0")
    if rate is not None and o.max_skip_rate < 1 and rate > o.max_skip_rate:
      self._starved(source, f"skipped {rate:.0%} of its last {o.skip_rate_window} records "
                    f"(data.max_skip_rate={o.max_skip_rate})", "data.max_skip_rate=1")

  def _outcome(self, source: str, skipped: bool) -> float | None:
    w = self._window.setdefault(source, collections.deque(maxlen=max(self.opts.skip_rate_window, 1)))
    w.append(skipped)
    return sum(w) / len(w) if len(w) == w.maxlen else None

  def _starved(self, source: str, what: str, off: str) -> None:
    reasons = {k.rsplit("/", 1)[1]: v for k, v in self._counts.items()
               if k.startswith(f"{source}/skip/")}
    reason = max(reasons, key=reasons.get)
    rid, detail = self._example[(source, reason)]
    by = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
    raise SourceStarvedError(
        f"Data source {source!r} {what}: skipped so far by reason: {by}. Example: record "
        f"{rid} ({reason}: {detail}). To fix: {ADVICE.get(reason, 'fix or drop the source')}; "
        f"or give the source weight 0. ({off} turns this check off.)", source, reason)

  def _log_skip(self, source: str, reason: str, record_id: Any, detail: str) -> None:
    key = (source, reason)
    if self._logged[key] < self.opts.log_first:
      self._logged[key] += 1
      more = " (further ones summarised)" if self._logged[key] == self.opts.log_first else ""
      log.warning("Skipped record %s (%s): %s%s", record_id, reason, detail, more)
      self._last_log[key] = time.monotonic()
      return
    self._pending[key] += 1
    self.flush_logs(force=False)

  def flush_logs(self, force: bool = True) -> None:
    """One line per (source, reason) with skips not yet logged (all when ``force``,
    else those whose last line is ``log_interval_s`` old)."""
    now = time.monotonic()
    for key, n in list(self._pending.items()):
      if n and (force or now - self._last_log.get(key, 0.0) >= self.opts.log_interval_s):
        rid, detail = self._example[key]
        log.warning("Skipped %d more records of source %s (%s), e.g. %s: %s", n, key[0],
                    key[1], rid, detail)
        self._pending[key] = 0
        self._last_log[key] = now

  # -- state
  def counts(self) -> dict[str, int]:
    """Flat counters ``<source>/records|kept|tokens|visual|fit/<kind>|skip/<reason>``."""
    return dict(self._counts)

  def restore(self, counts: dict[str, int]) -> None:
    """Counters of a checkpoint (``counts()``); recent lengths and windows start afresh."""
    self._counts = collections.Counter(counts)

  def summary(self) -> dict[str, dict[str, Any]]:
    """Per source: records, kept, fitted / skipped by kind, tokens p50 / p95 / max
    (recent samples), visual share of its tokens."""
    out: dict[str, dict[str, Any]] = {}
    for key, v in sorted(self._counts.items()):
      src, field = key.split("/", 1)
      out.setdefault(src, {"records": 0, "kept": 0, "tokens": 0, "visual": 0, "fit": {},
                           "skip": {}})
      if "/" in field:
        kind, name = field.split("/", 1)
        out[src][kind][name] = v
      else:
        out[src][field] = v
    for src, s in out.items():
      lengths = np.asarray(self._lengths.get(src, ()), np.int64)
      s["tokens_p50"], s["tokens_p95"], s["tokens_max"] = (
          (int(np.percentile(lengths, 50)), int(np.percentile(lengths, 95)), int(lengths.max()))
          if lengths.size else (0, 0, 0))
      s["visual_share"] = s["visual"] / s["tokens"] if s["tokens"] else 0.0
    return out
