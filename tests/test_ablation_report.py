"""The study's runner helpers and report (``bench/ablation.py``, ``ablation_report.py``,
``ablation_plot.py``) on synthetic runs: a resumed run's repeated steps, the kept
evaluation, the per-ordering interval equal to scipy's paired t interval, the figure."""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import ablation  # pylint: disable=wrong-import-position
import ablation_plot  # pylint: disable=wrong-import-position
import ablation_report as rep  # pylint: disable=wrong-import-position

TASKS = ("digit",) + rep.POSITION_TASKS


def _eval(step, acc, loss, task_loss=None):
  r = {"kind": "eval", "step": step, "loss": loss, "acc": acc}
  r.update({f"acc/{t}": acc for t in TASKS})
  r.update({f"loss/{t}": loss for t in TASKS})
  r.update(task_loss or {})
  return r


def _runs(rng):
  """Six variants x 4 seeds; position accuracy = base(variant) + seed effect + noise;
  each position task's loss at the kept step falls with the base, plus its own noise."""
  base = {"A": 0.5, "B": 0.52, "D": 0.55, "G": 0.6, "H": 0.7, "I": 0.69}
  runs = {}
  for v, b in base.items():
    runs[v] = {}
    for s in range(4):
      final = float(np.clip(b + 0.05 * s + rng.normal(0, 0.02), 0, 1))
      evals = {st: _eval(st, final * st / 400, 2.0 - st / 400) for st in (100, 200, 300)}
      evals[400] = _eval(400, final, 1.0, {f"loss/{t}": 1.5 - b + rng.normal(0, 0.03)
                                           for t in rep.POSITION_TASKS})
      evals[500] = _eval(500, final - 0.1, 1.1)     # after the kept one: worse
      runs[v][s] = {"evals": evals, "train": {100: {"step_time_s": 0.5}},
                    "done": {"best_step": 400, "last_eval_step": 500},
                    "predictions": {"grid_where": ["1,1"] * (7 + s) + ["2,3"] * 3}}
  return runs


def _assert_ordering_row(md, hi, lo, better, worse):
  """The 4-seed row ``hi > lo`` of the first table in ``md``: the mean paired difference
  ``better - worse``, scipy's 95% paired-t interval and the verdict it implies."""
  ci = stats.ttest_rel(better, worse).confidence_interval(0.95)
  m = re.search(rf"\| {hi} > {lo} \(.*?\) \| 4 \| ([-+.\d]+) \[([-+.\d]+), ([-+.\d]+)\] \|"
                rf" ([.\d]+) \| (\d)/4 \| ([a-z ]+) \|", md)
  assert m, f"{hi} > {lo} missing"
  assert float(m.group(1)) == pytest.approx(np.mean(np.subtract(better, worse)), abs=6e-4)
  assert float(m.group(2)) == pytest.approx(ci.low, abs=6e-4)
  assert float(m.group(3)) == pytest.approx(ci.high, abs=6e-4)
  want = "reproduced" if ci.low > 0 else ("refuted" if ci.high < 0 else "not resolved")
  assert m.group(6) == want


def test_predictions_of_an_evaluation(tmp_path):
  (tmp_path / "eval").mkdir()
  rows = [{"task": "digit", "record_id": i, "prediction": p, "answer": "3", "correct": p == "3"}
          for i, p in enumerate("3383")]
  (tmp_path / "eval" / "predictions_50.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))
  got = ablation.predictions(str(tmp_path), 50)
  assert got == {"digit": ["3", "3", "8", "3"]} and rep.top_share(got["digit"]) == 0.75
  assert ablation.predictions(str(tmp_path), 100) == {}


def test_records_keeps_the_last_record_of_a_step(tmp_path):
  p = tmp_path / "metrics.jsonl"
  lines = [_eval(100, 0.1, 2.0), _eval(200, 0.2, 1.5), {"kind": "train", "step": 200},
           _eval(200, 0.25, 1.4)]          # resumed from step 100: step 200 again
  p.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "ev')   # torn line
  got = ablation.records(str(p), "eval")
  assert sorted(got) == [100, 200] and got[200]["acc"] == 0.25
  assert ablation.records(str(tmp_path / "missing.jsonl"), "eval") == {}
  assert ablation.parse_seeds("0-3,7") == [0, 1, 2, 3, 7]


def test_report_numbers_and_plot(tmp_path):
  runs = _runs(np.random.default_rng(0))
  # Two invocations of 1800 s and 900 s; three runs side by side of 1000, 1200, 700 s.
  (tmp_path / "invocations.jsonl").write_text(
      '{"wall_s": 1800, "parallel": 2}\n{"wall_s": 900, "parallel": 2}\n')
  (tmp_path / "walltimes.jsonl").write_text("".join(
      json.dumps({"wall_s": w, "cpu_s": w / 2}) + "\n" for w in (1000, 1200, 700)))
  md = rep.report(runs, [0, 1, 2], {"patience": 3}, str(tmp_path))
  assert "Wall time of the study: 0.75 h over 2 invocation(s)" in md
  assert "sum to 0.81 h, their CPU time to 0.40 h" in md
  assert f"{6 * 4 * 100} steps in all" in md
  for hi, lo in rep.ORDERINGS:
    a = [runs[hi][s]["evals"][400]["acc/grid_where"] for s in range(4)]
    b = [runs[lo][s]["evals"][400]["acc/grid_where"] for s in range(4)]
    _assert_ordering_row(md, hi, lo, a, b)
  # The loss table: loss(worse) - loss(better), the position tasks' mean loss.
  loss_md = md[md.index("The same on `position_loss`"):]
  for hi, lo in rep.ORDERINGS:
    lh, ll = ([np.mean([runs[v][s]["evals"][400][f"loss/{t}"] for t in rep.POSITION_TASKS])
               for s in range(4)] for v in (hi, lo))
    _assert_ordering_row(loss_md, hi, lo, ll, lh)
  assert "| H > G | position_loss | 3 |" in md
  # Power: the pilot's (seeds 0-2) paired differences of position accuracy, H > G.
  d = [runs["H"][s]["evals"][400]["acc/grid_where"]
       - runs["G"][s]["evals"][400]["acc/grid_where"] for s in range(3)]
  m = re.search(r"\| H > G \| position \| 3 \| ([-+.\d]+) \| ([.\d]+) \| (\d+) \| "
                r"(\d+) \| 4 \| ([.\d]+) \|", md)
  assert m and float(m.group(1)) == pytest.approx(np.mean(d), abs=6e-4)
  assert float(m.group(2)) == pytest.approx(np.std(d, ddof=1), abs=6e-4)
  # dz about 8: 3 seeds for 80% power and for 95%; 4 seeds give more than 0.99.
  assert (int(m.group(3)), int(m.group(4))) == (3, 3) and float(m.group(5)) > 0.99
  # Answer priors: grid_where's top answer has 7/10 .. 10/13 of the answers over seeds 0-3.
  share = np.mean([(7 + s) / (10 + s) for s in range(4)])
  assert re.search(rf"\| H \| nan \| {share:.2f} \| nan \| nan \| nan \|", md)
  assert "H > G (44.0 vs 40.3) | 4 |" in md and "| H > G |" in md
  # Kept = the lowest-loss evaluation (step 400), not the last (500).
  h = [runs["H"][s]["evals"][400]["acc/digit"] for s in range(4)]
  assert f"{np.mean(h):.3f} ± {np.std(h, ddof=1):.3f}" in md
  path = tmp_path / "ablation.png"
  ablation_plot.plot(runs, str(path))
  assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"


def _flags(tmp_path, **kw):
  from absl import flags  # pylint: disable=import-outside-toplevel
  argv = (["ablation", f"--workdir={tmp_path}", "--poll_s=0.5"]
          + [f"--{k}={v}" for k, v in kw.items()])
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)


def test_train_one_finishes_a_run_its_rule_already_stopped(tmp_path):
  """A study stopped between the run's last evaluation and its done.json: the next
  invocation writes done.json without training again; a done run is skipped."""
  _flags(tmp_path, patience=2, min_delta=0.01, min_step=0)
  d = tmp_path / "H_s0"
  d.mkdir()
  lines = [_eval(100, 0.3, 1.0), _eval(200, 0.4, 0.9), _eval(300, 0.5, 0.95), _eval(400, 0.5, 0.91)]
  (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
  done = ablation.train_one(str(tmp_path), "H", 0)
  assert done["reason"] == "early_stop" and done["best_step"] == 200
  assert done["last_eval_step"] == 400
  assert json.loads((d / "done.json").read_text())["best_step"] == 200
  assert ablation.train_one(str(tmp_path), "H", 0) is None


@pytest.mark.slow
def test_study_end_to_end_stops_early_and_reports(tmp_path):
  """Two variants x one seed of real training, side by side: min_delta 1 means no evaluation ever
  improves, so each run is sent SIGTERM after its second evaluation, saves, exits 0;
  done.json, the report and the figure follow; a second invocation trains nothing."""
  import subprocess  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, "bench/ablation.py", f"--workdir={tmp_path}", "--variants=HB",
         "--seeds=0", "--pilot_seeds=0", "--max_steps=40", "--eval_every=4", "--eval_limit=2",
         "--patience=1", "--min_delta=1.0", "--min_step=0", "--poll_s=0.5", f"--out={tmp_path}",
         "--parallel=2"]
  # One CPU device, as the study runs (conftest's 8 fake devices do not divide 4 rows).
  xla = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                 if "xla_force_host_platform_device_count" not in f)
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu", XLA_FLAGS=xla)
  r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1200)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  for v in "HB":
    done = json.loads((tmp_path / f"{v}_s0" / "done.json").read_text())
    assert done["reason"] == "early_stop" and 8 <= done["last_eval_step"] < 40
    assert done["best_step"] in (4, 8) and done["cpu_s"] > 0
    assert "Preemption notice: saved checkpoint" in (tmp_path / f"{v}_s0.log").read_text()
  md = (tmp_path / "ablation.md").read_text()
  assert "| H > B (44.0 vs 39.8) | 1 |" in md and (tmp_path / "ablation.png").exists()
  r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0 and "seed 0: " not in r.stdout.replace("[ablation] wrote", "")
