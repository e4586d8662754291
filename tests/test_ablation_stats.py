"""The study's statistics (``bench/ablation_stats.py``) on fixed numbers.

* The paired interval and p-value equal scipy's ``ttest_rel`` (its
  ``confidence_interval``), and the verdict follows the interval.
* The seeds a comparison needs equal G*Power's published sample sizes for the
  matched-pairs t-test (two-sided, alpha 0.05, power 0.8: dz 0.5 -> 34, 0.8 -> 15,
  1.0 -> 10), and the power agrees with a simulation of the test.
* Early stopping: patience counted from the last improvement of at least min_delta,
  the lowest loss kept, no stop before min_step.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import ablation_stats as st  # pylint: disable=wrong-import-position


A = [0.61, 0.72, 0.55, 0.80, 0.67, 0.70]
B = [0.58, 0.65, 0.57, 0.71, 0.60, 0.69]


def test_paired_interval_equals_scipy():
  for a, b in ((A, B), (B, A), ([0.9, 0.8, 0.85, 0.95, 0.9], [0.5, 0.55, 0.4, 0.6, 0.5])):
    r = stats.ttest_rel(a, b)
    ci = r.confidence_interval(0.95)
    got = st.paired(a, b)
    assert got.lo == pytest.approx(ci.low, abs=1e-12)
    assert got.hi == pytest.approx(ci.high, abs=1e-12)
    assert got.p == pytest.approx(r.pvalue, rel=1e-9)
    assert got.n == len(a) and got.mean == pytest.approx(np.mean(np.subtract(a, b)))
    assert got.holds == int(np.sum(np.subtract(a, b) > 0))
  assert st.paired(A, B).verdict == "not resolved"     # p = 0.06: the interval holds 0
  assert st.paired([0.9, 0.8, 0.85, 0.95, 0.9], [0.5, 0.55, 0.4, 0.6, 0.5]).verdict == "reproduced"
  assert st.paired([0.5, 0.55, 0.4, 0.6, 0.5], [0.9, 0.8, 0.85, 0.95, 0.9]).verdict == "refuted"
  ci99 = stats.ttest_rel(A, B).confidence_interval(0.99)
  assert st.paired(A, B, confidence=0.99).lo == pytest.approx(ci99.low, abs=1e-12)
  with pytest.raises(ValueError):
    st.paired([1.0], [0.0])


def test_seeds_needed_equals_gpower_and_a_simulation():
  for dz, n in ((0.5, 34), (0.8, 15), (1.0, 10)):
    assert st.seeds_needed(dz * 0.1, 0.1) == n
    assert st.power(n - 1, dz, 1.0) < 0.8 <= st.power(n, dz, 1.0)
  assert st.seeds_needed(0.0, 0.1) is None
  # A large effect (dz 8.3): finite power, 3 seeds (n = 2 has 1 df: t(0.975) = 12.7).
  assert 0.5 < st.power(2, 0.108, 0.013) < 0.8 and st.seeds_needed(0.108, 0.013) == 3
  # Negative differences: the same power (two-sided test).
  assert st.power(8, -0.05, 0.08) == pytest.approx(st.power(8, 0.05, 0.08), rel=1e-12)
  assert st.seeds_needed(0.001, 1.0, most=50) is None
  rng = np.random.default_rng(0)
  d = rng.normal(0.05, 0.08, size=(20000, 8))        # 20000 studies of 8 seeds
  t = d.mean(1) / (d.std(1, ddof=1) / np.sqrt(8))
  rejected = np.mean(np.abs(t) > stats.t.ppf(0.975, 7))
  assert rejected == pytest.approx(st.power(8, 0.05, 0.08), abs=0.015)


def test_early_stop_patience_and_best():
  losses = [(100, 1.0), (200, 0.8), (300, 0.7), (400, 0.705), (500, 0.69), (600, 0.72)]
  d = st.early_stop(losses, patience=3, min_delta=0.02)
  # 0.69 < 0.7 but not by 2%: kept as best, not an improvement that resets patience.
  assert d == st.StopDecision(True, 500, 3)
  assert not st.early_stop(losses, patience=4, min_delta=0.02).stop
  assert not st.early_stop(losses, patience=3, min_delta=0.02, min_step=700).stop
  assert st.early_stop(losses[:3], patience=1, min_delta=0.0) == st.StopDecision(False, 300, 0)
  assert st.early_stop(list(reversed(losses)), patience=3, min_delta=0.02).best_step == 500
  assert st.early_stop([], patience=2, min_delta=0.0) == st.StopDecision(False, None, 0)
  with pytest.raises(ValueError):
    st.early_stop([(100, float("nan"))], patience=2, min_delta=0.0)
