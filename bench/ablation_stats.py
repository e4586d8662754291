"""The numbers of the Table 3 study (``bench/ablation.py``): early stopping, paired
confidence intervals across seeds, and the seeds a comparison needs.

* ``early_stop``: patience on the held-out loss (Prechelt, "Early stopping - but
  when?", 1998: stop after ``patience`` evaluations without a relative improvement
  of ``min_delta``; keep the evaluation with the lowest loss).
* ``paired``: the paired t interval of a mean difference across seeds,
  ``mean +- t(0.975, n - 1) sd / sqrt(n)`` (Student; the interval
  ``scipy.stats.ttest_rel(...).confidence_interval()`` gives), with its two-sided
  p-value, and the verdict: reproduced (the interval lies above 0), refuted (below
  0), not resolved (it holds 0).
* ``seeds_needed``: the fewest seeds for which a two-sided paired t-test at level
  ``alpha`` detects a true mean difference ``delta`` with probability ``power``, given
  the sd of the paired differences (power from the noncentral t distribution, as
  G*Power's "matched pairs" test).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import stats


@dataclasses.dataclass(frozen=True)
class StopDecision:
  """``stop``: the rule says stop; ``best_step``: the evaluation kept (lowest loss);
  ``since_best``: evaluations after the last improvement."""
  stop: bool
  best_step: int | None
  since_best: int


def early_stop(losses: Sequence[tuple[int, float]], *, patience: int, min_delta: float,
               min_step: int = 0) -> StopDecision:
  """The early-stopping decision after the evaluations so far.

  Args:
    losses: ``(step, held-out loss)`` in any order (sorted by step here).
    patience: evaluations without improvement that stop the run (>= 1).
    min_delta: an evaluation improves when its loss < best * (1 - min_delta).
    min_step: no stop before this step.
  Returns:
    ``StopDecision`` (``best_step`` None when there is no evaluation).
  Raises:
    ValueError: patience < 1 or a non-finite loss.
  """
  if patience < 1:
    raise ValueError(f"patience={patience} must be >= 1.")
  best_step, best, since = None, math.inf, 0
  for step, loss in sorted(losses):
    if not math.isfinite(loss):
      raise ValueError(f"held-out loss {loss} at step {step} is not finite.")
    if loss < best * (1.0 - min_delta) or best_step is None:
      best_step, best, since = step, loss, 0
    else:
      since += 1
      if loss < best:          # lower but not by min_delta: keep it, do not reset
        best_step, best = step, loss
  last = max((s for s, _ in losses), default=0)
  return StopDecision(since >= patience and last >= min_step, best_step, since)


@dataclasses.dataclass(frozen=True)
class Paired:
  """A paired comparison across seeds: ``n`` seeds, mean and sample sd of the
  differences, the ``confidence`` interval ``[lo, hi]``, two-sided ``p``, ``holds``
  (seeds with difference > 0) and ``verdict``."""
  n: int
  mean: float
  sd: float
  lo: float
  hi: float
  p: float
  holds: int
  verdict: str


def paired(better: Sequence[float], worse: Sequence[float],
           confidence: float = 0.95) -> Paired:
  """Paired t interval of ``mean(better - worse)`` (module docstring).

  Raises:
    ValueError: unequal lengths or fewer than 2 pairs.
  """
  a, b = np.asarray(better, np.float64), np.asarray(worse, np.float64)
  if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
    raise ValueError(f"need two equal-length series of >= 2 values, got {a.shape}, {b.shape}.")
  d = a - b
  n, mean, sd = len(d), float(d.mean()), float(d.std(ddof=1))
  half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
  if sd > 0:
    p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
  else:
    p = 1.0 if mean == 0 else 0.0
  lo, hi = float(mean - half), float(mean + half)
  verdict = "reproduced" if lo > 0 else ("refuted" if hi < 0 else "not resolved")
  return Paired(n, mean, sd, lo, hi, p, int((d > 0).sum()), verdict)


def power(n: int, delta: float, sd: float, alpha: float = 0.05) -> float:
  """Power of the two-sided paired t-test with ``n`` pairs for a true mean difference
  ``delta`` and sd ``sd`` of the differences (noncentral t, df = n - 1)."""
  if n < 2:
    return 0.0
  if sd <= 0:
    return 1.0 if delta != 0 else alpha
  df, nc = n - 1, abs(delta) / sd * math.sqrt(n)
  crit = stats.t.ppf(1 - alpha / 2, df)
  # The lower tail P(T < -crit) as P(T > crit) at -nc: scipy's nct.cdf returns nan where
  # that tail underflows (large nc), the mirrored sf returns 0.
  return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc))


def seeds_needed(delta: float, sd: float, *, alpha: float = 0.05, target: float = 0.8,
                 most: int = 1000) -> int | None:
  """The fewest seeds (>= 2) with ``power(n, delta, sd, alpha) >= target``; None when
  more than ``most`` would be needed (or ``delta`` is 0)."""
  if delta == 0:
    return None
  for n in range(2, most + 1):
    if power(n, delta, sd, alpha) >= target:
      return n
  return None
