"""The Markdown report of the Table 3 study (``bench/ablation.py``): per-variant held-out
accuracy at each run's kept evaluation, the paper's orderings as paired differences
across seeds with 95% paired-t intervals, the power reasoning from the pilot seeds, and
the wall time.

A run is ``{"evals": {step: eval record}, "train": {step: train record}, "done":
done.json}``; its kept evaluation is ``done["best_step"]`` (lowest held-out loss).
The primary measure is ``position``: the mean held-out exact-match accuracy over the
four position tasks (``neo_jax/configs/ablation.py``'s ``POSITION_TASKS``); ``digit`` is the
control ("learned at all": >= ``CONTROL_THRESHOLD``). The second measure is
``position_loss``: the mean held-out answer loss (nats per answer token, teacher forced)
over the same four tasks, which moves before exact-match answers do; for it the paper's
ordering "X > Y" means X's loss is lower, and its differences are reported as
``loss(Y) - loss(X)`` so that a positive difference agrees with the paper for both
measures.
"""

from __future__ import annotations

import json
import os

import numpy as np

import ablation_stats
from neo_jax.configs import ablation as ablation_config

POSITION_TASKS = ablation_config.POSITION_TASKS
CONTROL = ablation_config.CONTROL_TASK
CONTROL_THRESHOLD = 0.8
POSITION_THRESHOLD = 0.6
# The paper's orderings (Table 3), as (better, worse) pairs.
ORDERINGS = (("H", "G"), ("H", "B"), ("G", "A"), ("B", "A"), ("H", "D"), ("H", "I"))
POWER_TARGET = 0.8


def position(rec: dict) -> float:
  """Mean held-out accuracy over the position tasks of one eval record."""
  return float(np.mean([rec[f"acc/{t}"] for t in POSITION_TASKS]))


def position_loss(rec: dict) -> float:
  """Mean held-out answer loss over the position tasks of one eval record."""
  return float(np.mean([rec[f"loss/{t}"] for t in POSITION_TASKS]))


def lower_is_better(name: str) -> bool:
  """Whether ``name`` is a loss (the paper's ordering predicts a lower value)."""
  return name.endswith("loss")


def measure(rec: dict, name: str) -> float:
  """``position``, ``position_loss``, ``loss`` or one task's accuracy (``acc/<name>``)."""
  if name == "position":
    return position(rec)
  if name == "position_loss":
    return position_loss(rec)
  return float(rec[name if name == "loss" else f"acc/{name}"])


def kept(run: dict) -> dict:
  """The run's kept eval record (lowest held-out loss)."""
  return run["evals"][run["done"]["best_step"]]


def first_step(run: dict, name: str, threshold: float) -> int | None:
  """First evaluation step where ``measure >= threshold`` (None: never)."""
  for step in sorted(run["evals"]):
    if measure(run["evals"][step], name) >= threshold:
      return step
  return None


def _ms(values) -> str:
  a = np.asarray(values, np.float64)
  return f"{a.mean():.3f} ± {a.std(ddof=1):.3f}" if len(a) > 1 else f"{a.mean():.3f}"


def _steps(values) -> str:
  hit = [v for v in values if v is not None]
  if not hit:
    return "never"
  return f"{int(np.median(hit))} ({len(hit)}/{len(values)})"


def variant_table(runs: dict[str, dict[int, dict]]) -> list[str]:
  """Per variant: final (kept) held-out accuracy and loss, mean ± sample sd over seeds."""
  cols = [CONTROL, *POSITION_TASKS, "position", "loss"]
  lines = ["| variant | mask | RoPE | θ_hw | paper | seeds | stop step | kept step | "
           + " | ".join(cols) + f" | steps to {CONTROL} ≥ {CONTROL_THRESHOLD} | "
           f"steps to position ≥ {POSITION_THRESHOLD} |", "|---" * (len(cols) + 10) + "|"]
  for v, by_seed in runs.items():
    if not by_seed:
      continue
    spec = ablation_config.VARIANTS[v]
    rs = list(by_seed.values())
    stop = [r["done"]["last_eval_step"] for r in rs]
    best = [r["done"]["best_step"] for r in rs]
    vals = [_ms([measure(kept(r), c) for r in rs]) for c in cols]
    lines.append(
        f"| {v} | {spec['attention_mask']} | {spec['rope_mode']} | {spec['rope_theta_hw']:.0e} | "
        f"{spec['paper']} | {len(rs)} | {int(np.median(stop))} [{min(stop)}-{max(stop)}] | "
        f"{int(np.median(best))} [{min(best)}-{max(best)}] | " + " | ".join(vals) + " | "
        f"{_steps([first_step(r, CONTROL, CONTROL_THRESHOLD) for r in rs])} | "
        f"{_steps([first_step(r, 'position', POSITION_THRESHOLD) for r in rs])} |")
  return lines


def pairs(runs, hi: str, lo: str, name: str, seeds=None) -> tuple[list[int], list[float],
                                                                    list[float]]:
  """Seeds both variants finished (within ``seeds``), and their kept ``measure``s as
  ``(seeds, first, second)`` with ``first - second`` > 0 where the paper's ordering
  holds (``hi``'s value first for an accuracy, ``lo``'s first for a loss)."""
  common = sorted(set(runs.get(hi, {})) & set(runs.get(lo, {})))
  if seeds is not None:
    common = [s for s in common if s in seeds]
  a = [measure(kept(runs[hi][s]), name) for s in common]
  b = [measure(kept(runs[lo][s]), name) for s in common]
  return (common, b, a) if lower_is_better(name) else (common, a, b)


def ordering_table(runs, name: str = "position") -> list[str]:
  """The paper's orderings: paired difference of ``name`` with its 95% paired-t interval."""
  sign = "loss(worse) - loss(better)" if lower_is_better(name) else "better - worse"
  lines = [f"| ordering (paper's scores) | seeds | {name}, {sign}: mean [95% CI] | p | "
           "seeds where it holds | verdict |", "|---|---|---|---|---|---|"]
  for hi, lo in ORDERINGS:
    seeds, a, b = pairs(runs, hi, lo, name)
    paper = (f"{ablation_config.VARIANTS[hi]['paper']} vs "
             f"{ablation_config.VARIANTS[lo]['paper']}")
    if len(seeds) < 2:
      lines.append(f"| {hi} > {lo} ({paper}) | {len(seeds)} | — | — | — | "
                   "fewer than 2 seeds |")
      continue
    r = ablation_stats.paired(a, b)
    lines.append(f"| {hi} > {lo} ({paper}) | {r.n} | {r.mean:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}] "
                 f"| {r.p:.3f} | {r.holds}/{r.n} | {r.verdict} |")
  return lines


def task_table(runs) -> list[str]:
  """Each ordering's paired mean difference [95% CI] per task and on the loss."""
  names = [CONTROL, *POSITION_TASKS, "loss"]
  lines = ["| ordering | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for hi, lo in ORDERINGS:
    cells = []
    for name in names:
      seeds, a, b = pairs(runs, hi, lo, name)
      if len(seeds) < 2:
        cells.append("—")
        continue
      r = ablation_stats.paired(a, b)
      cells.append(f"{r.mean:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}]")
    lines.append(f"| {hi} > {lo} | " + " | ".join(cells) + " |")
  return lines


def power_table(runs, pilot: list[int], name: str = "position") -> list[str]:
  """From the pilot seeds: each ordering's difference of ``name`` and its sd, the seeds
  needed for 80% (``POWER_TARGET``) and 95% power at that difference, and the power the
  study's seeds have for it."""
  lines = [f"| ordering | measure | pilot seeds | pilot mean difference | pilot sd | seeds for "
           "80% power | seeds for 95% power | study seeds | power at the study's seeds |",
           "|---|---|---|---|---|---|---|---|---|"]
  for hi, lo in ORDERINGS:
    ps, a, b = pairs(runs, hi, lo, name, seeds=set(pilot))
    n_all = len(pairs(runs, hi, lo, name)[0])
    if len(ps) < 2:
      lines.append(f"| {hi} > {lo} | {name} | {len(ps)} | — | — | — | — | {n_all} | — |")
      continue
    d = np.subtract(a, b)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    need = [ablation_stats.seeds_needed(mean, sd, target=t) for t in (POWER_TARGET, 0.95)]
    pw = ablation_stats.power(n_all, mean, sd)
    lines.append(f"| {hi} > {lo} | {name} | {len(ps)} | {mean:+.3f} | {sd:.3f} | "
                 + " | ".join(str(n) if n is not None else "> 1000" for n in need)
                 + f" | {n_all} | {pw:.2f} |")
  return lines


def top_share(answers: list[str]) -> float:
  """The most common answer's share of ``answers`` (1.0: one answer to every question, the
  answer prior, whatever the image shows); nan when there are none."""
  if not answers:
    return float("nan")
  return max(answers.count(a) for a in set(answers)) / len(answers)


def prior_table(runs) -> list[str]:
  """Per variant and task: the most common held-out answer's share at the kept evaluation,
  mean over seeds (``nan`` where a run's predictions file is missing)."""
  tasks = [CONTROL, *POSITION_TASKS]
  lines = ["| variant | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
  for v, by_seed in runs.items():
    if not by_seed:
      continue
    shares = {t: [top_share(r.get("predictions", {}).get(t, [])) for r in by_seed.values()]
              for t in tasks}
    cells = [[x for x in shares[t] if not np.isnan(x)] for t in tasks]
    lines.append(f"| {v} | " + " | ".join(f"{np.mean(c):.2f}" if c else "nan" for c in cells)
                 + " |")
  return lines


def control_lines(runs) -> list[str]:
  """Runs whose control stayed under the threshold at the kept evaluation."""
  low = [f"{v} seed {s} ({measure(kept(r), CONTROL):.3f})" for v, by in runs.items()
         for s, r in sorted(by.items()) if measure(kept(r), CONTROL) < CONTROL_THRESHOLD]
  n = sum(len(by) for by in runs.values())
  if not low:
    return [f"Control: every run ({n}) reached {CONTROL} ≥ {CONTROL_THRESHOLD} held-out at "
            "its kept evaluation."]
  return [f"Control: {len(low)} of {n} runs stayed under {CONTROL} {CONTROL_THRESHOLD} at "
          f"their kept evaluation: {', '.join(low)}."]


def _jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def wall_lines(runs, workdir: str) -> list[str]:
  """The study's wall time (sum over the invocations of ``bench/ablation.py``, from
  ``{workdir}/invocations.jsonl``), the runs' summed wall and CPU time (from
  ``walltimes.jsonl``; runs trained side by side overlap), the steps trained and the
  median logged step time."""
  inv = _jsonl(os.path.join(workdir, "invocations.jsonl"))
  per_run = _jsonl(os.path.join(workdir, "walltimes.jsonl"))
  wall = sum(r["wall_s"] for r in per_run)
  cpu = sum(r["cpu_s"] for r in per_run)
  steps = [t["step_time_s"] for by in runs.values() for r in by.values()
           for t in r["train"].values() if "step_time_s" in t]
  trained = sum(max(r["train"], default=0) for by in runs.values() for r in by.values())
  study = sum(r["wall_s"] for r in inv)
  par = sorted({r.get("parallel", 1) for r in inv})
  return [f"Wall time of the study: {study / 3600:.2f} h over {len(inv)} invocation(s) "
          f"(runs side by side: {par}); the runs' own wall times sum to {wall / 3600:.2f} h, "
          f"their CPU time to {cpu / 3600:.2f} h; {trained} steps in all; median logged "
          f"step time {np.median(steps) if steps else float('nan'):.3f} s."]


def report(runs, pilot: list[int], rule: dict, workdir: str) -> str:
  """The whole Markdown report (``workdir``: where the wall-time logs are)."""
  n_runs = sum(len(by) for by in runs.values())
  out = [f"Table 3 ablation: {n_runs} runs (`bench/ablation.py`, rule {json.dumps(rule)}); "
         "each run's result is its evaluation with the lowest held-out loss.", "",
         "Held-out accuracy (grids of sizes never trained on; digit: unseen drawings), mean "
         "± sample sd over seeds:", "", *variant_table(runs), "", *control_lines(runs), "",
         "Answer priors: the most common held-out answer's share per task at the kept "
         "evaluation (mean over seeds; 1.00 = the same answer to every question, whatever "
         "the image shows; grid_relation offers two words in its question, so picking one of "
         "them gives a share near 0.5-0.6 without reading the image). Where a run answers "
         "from its prior, its accuracy differences measure which answer it settled on, not "
         "its use of position:", "", *prior_table(runs), "",
         "The paper's orderings on `position` (held-out exact-match accuracy, mean of the four "
         "position tasks), paired by seed; 95% paired-t intervals (Student t, n - 1 df); "
         "reproduced = the interval lies above 0, refuted = below 0, else not resolved:", "",
         *ordering_table(runs), "",
         "The same on `position_loss` (held-out answer loss of the four position tasks, nats "
         "per answer token; the difference is loss(worse) - loss(better), so a positive "
         "value agrees with the paper):", "", *ordering_table(runs, "position_loss"), "",
         "Per task and on the all-task held-out loss (mean difference [95% CI], signed so "
         "that positive agrees with the paper):", "",
         *task_table(runs), "", f"Power (pilot seeds {pilot}; paired t-test, two-sided, "
         f"α = 0.05, power {POWER_TARGET} and 0.95; the pilot's mean difference and sd taken "
         "as the true ones):", "", *power_table(runs, pilot),
         *power_table(runs, pilot, "position_loss")[2:], "",
         *wall_lines(runs, workdir)]
  return "\n".join(out) + "\n"
