"""The context-length schedule: ``seq_len`` phases by step (NEO-ov mid-training).

NEO-ov's mid-training "progressively extends the context length from 16K to 36K
tokens" (NEO-ov paper, §4 training recipe). A run gives it as
``config.seq_len_schedule = [[0, 16384], [k, 24576], [m, 36864]]``: from step ``k``
on, batches are packed at 24,576 tokens per row, and so on; a start below 1 that is
not 0 (``0.4``) is a fraction of ``train.num_steps`` (rounded to a step), so the phases
follow a changed run length. An empty schedule means ``config.seq_len`` throughout.
The batch keeps its rows (``batch_size``), so the tokens per step grow with the phase.

Each phase has its own train step, compiled once when the phase starts (a new
``[batch, seq_len]`` shape), and its own input pipeline: at the boundary the
pipeline is rebuilt at the new length from the old iterator's state, so it goes on
with the same records, repacked (and re-fitted to the new limit) from there. A
resume inside any phase builds that phase's pipeline and restores its state, which
is what the uninterrupted run did at that step: both yield the same batches.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence


@dataclasses.dataclass(frozen=True)
class Phase:
  """One phase: ``seq_len`` [tokens per row] from ``start`` [step] on (index ``index``)."""
  index: int
  start: int
  seq_len: int


def phases(config: Any) -> list[Phase]:
  """The run's phases, in order (one phase of ``config.seq_len`` without a schedule).

  Raises:
    ValueError: a schedule that does not start at step 0, steps not increasing,
      a non-positive length, or a last length other than ``config.seq_len`` (which
      sizes everything that must hold the longest row: say which to change).
  """
  sched: Sequence = config.get("seq_len_schedule", None) or ()
  if not sched:
    return [Phase(0, 0, int(config.seq_len))]
  out = []
  num_steps = int(config.get("train", {}).get("num_steps", 0) or 0)
  for i, item in enumerate(sched):
    try:
      start, length = item
      start = round(float(start) * num_steps) if 0 < float(start) < 1 else int(start)
      length = int(length)
    except (TypeError, ValueError) as e:
      raise ValueError(f"seq_len_schedule entry {item!r} is not a [step, seq_len] pair.") from e
    if length <= 0:
      raise ValueError(f"seq_len_schedule entry {item!r}: seq_len must be > 0.")
    if (i == 0 and start != 0) or (i > 0 and start <= out[-1].start):
      raise ValueError(f"seq_len_schedule {list(sched)!r}: steps must start at 0 and increase.")
    out.append(Phase(i, start, length))
  if out[-1].seq_len != int(config.seq_len):
    raise ValueError(f"seq_len_schedule ends at {out[-1].seq_len} tokens but seq_len is "
                     f"{config.seq_len}: set seq_len to the last phase's length.")
  return out


def phase_at(config: Any, step: int) -> Phase:
  """The phase that trains step ``step`` (0-based: the step about to be taken)."""
  current = None
  for p in phases(config):
    if p.start <= step:
      current = p
  return current


def describe(config: Any) -> str:
  """One line: ``16384 tokens from step 0, 24576 from step 2000, ...``."""
  ps = phases(config)
  return ", ".join(f"{p.seq_len} tokens from step {p.start}" for p in ps)
