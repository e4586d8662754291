"""The NEO paper's Table 3 ablation at demo scale: every variant x several seeds.

    python bench/ablation.py --workdir /tmp/neo_ablation            # run what is missing, report
    python bench/ablation.py --workdir /tmp/neo_ablation --report_only

Each (variant, seed) is one ``python -m neo_jax.train --config
ablation:variant=V,seed=S,...`` run in ``{workdir}/{V}_s{S}``, one after
the other; a run whose final evaluation is already in its ``metrics.jsonl`` is
kept, so an interrupted study continues where it stopped. Runs of one seed share
the initial parameters and the data order (``train.seed``), so variants are
compared on the same batches.

Writes ``{workdir}/ablation.md`` (final held-out accuracy per task: mean +- sample
standard deviation over seeds; paired per-seed differences for the paper's
orderings) and ``{workdir}/ablation.png`` (accuracy against steps per variant,
mean over seeds, the band is +- one standard deviation). Needs matplotlib (the
``bench`` extra).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from neo_jax.configs import ablation as ablation_config  # pylint: disable=wrong-import-position

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/neo_ablation", "Parent directory of the runs.")
_VARIANTS = flags.DEFINE_string("variants", "ABDGHI", "Table 3 letters to run.")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds.")
_STEPS = flags.DEFINE_integer("steps", 320, "Training steps per run.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 80, "Held-out evaluation interval [steps].")
_EVAL_LIMIT = flags.DEFINE_integer("eval_limit", 100, "Held-out examples per task.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only aggregate existing runs.")

# The tasks where the position design should matter (one image's layout, aspect
# ratio, several images), averaged as "position".
POSITION_TASKS = ("spatial", "aspect", "multi_image")
TASKS = POSITION_TASKS + ("digit", "video", "text")
# The paper's orderings (Table 3), as (better, worse) pairs.
ORDERINGS = (("H", "G"), ("H", "B"), ("G", "A"), ("B", "A"), ("D", "B"), ("H", "D"), ("H", "I"))


def run_dir(workdir: str, variant: str, seed: int) -> str:
  """``{workdir}/{variant}_s{seed}``."""
  return os.path.join(workdir, f"{variant}_s{seed}")


def eval_records(path: str) -> dict[int, dict[str, float]]:
  """``{step: {"acc/<task>": float, "acc": float, ...}}`` from one run's metrics.jsonl
  ({} when the file is missing)."""
  out = {}
  if not os.path.exists(path):
    return out
  with open(path, encoding="utf-8") as f:
    for line in f:
      r = json.loads(line)
      if r.get("kind") == "eval":
        out[int(r["step"])] = r
  return out


def position_mean(record: dict) -> float:
  """Mean accuracy over ``POSITION_TASKS`` of one eval record."""
  return float(np.mean([record[f"acc/{t}"] for t in POSITION_TASKS]))


def train_one(workdir: str, variant: str, seed: int, steps: int, eval_every: int,
              eval_limit: int) -> float:
  """Trains one (variant, seed) unless its final eval exists; returns the wall time [s]
  (0 when skipped).

  Raises:
    subprocess.CalledProcessError: the training run failed.
  """
  d = run_dir(workdir, variant, seed)
  if steps in eval_records(os.path.join(d, "metrics.jsonl")):
    return 0.0
  shutil.rmtree(d, ignore_errors=True)  # a partial run restarts from step 0
  arg = f"variant={variant},seed={seed},steps={steps},eval_every={eval_every},eval_limit={eval_limit}"
  cmd = [sys.executable, "-m", "neo_jax.train", f"--config=ablation:{arg}",
         f"--workdir={d}"]
  print(f"[ablation] {variant} seed {seed}: {' '.join(cmd[2:])}", flush=True)
  t0 = time.perf_counter()
  with open(os.path.join(workdir, f"{variant}_s{seed}.log"), "w", encoding="utf-8") as log:
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  wall = time.perf_counter() - t0
  print(f"[ablation] {variant} seed {seed}: done in {wall:.0f} s, final "
        f"{eval_records(os.path.join(d, 'metrics.jsonl'))[steps]['acc']:.3f}", flush=True)
  return wall


def collect(workdir: str, variants: str, seeds: list[int]) -> dict[str, dict[int, dict]]:
  """``{variant: {seed: {step: eval record}}}`` of the runs that exist."""
  return {v: {s: eval_records(os.path.join(run_dir(workdir, v, s), "metrics.jsonl"))
              for s in seeds} for v in variants}


def _mean_sd(values: list[float]) -> str:
  a = np.asarray(values, np.float64)
  sd = a.std(ddof=1) if len(a) > 1 else 0.0
  return f"{a.mean():.3f} ± {sd:.3f}"


def table(runs: dict[str, dict[int, dict]], step: int) -> str:
  """Markdown: final accuracy per variant and task (mean ± sd over seeds), then the
  paper's orderings as per-seed paired differences of the position mean."""
  cols = list(TASKS) + ["position", "all"]
  lines = ["| variant | mask | RoPE | theta_hw | paper | " + " | ".join(cols) + " |",
           "|---" * (len(cols) + 5) + "|"]
  finals = {}
  for v, by_seed in runs.items():
    recs = [r[step] for r in by_seed.values() if step in r]
    if not recs:
      continue
    finals[v] = {s: r[step] for s, r in by_seed.items() if step in r}
    spec = ablation_config.VARIANTS[v]
    vals = [_mean_sd([r[f"acc/{t}"] for r in recs]) for t in TASKS]
    vals += [_mean_sd([position_mean(r) for r in recs]), _mean_sd([r["acc"] for r in recs])]
    lines.append(f"| {v} | {spec['attention_mask']} | {spec['rope_mode']} | "
                 f"{spec['rope_theta_hw']:.0e} | {spec['paper']} | " + " | ".join(vals) + " |")
  lines += ["", "| ordering (paper) | position: mean diff ± sd | seeds where it holds | "
            "all: mean diff ± sd | seeds where it holds |", "|---|---|---|---|---|"]
  for hi, lo in ORDERINGS:
    if hi not in finals or lo not in finals:
      continue
    seeds = sorted(set(finals[hi]) & set(finals[lo]))
    dpos = [position_mean(finals[hi][s]) - position_mean(finals[lo][s]) for s in seeds]
    dall = [finals[hi][s]["acc"] - finals[lo][s]["acc"] for s in seeds]
    lines.append(f"| {hi} > {lo} | {_mean_sd(dpos)} | {sum(d > 0 for d in dpos)}/{len(seeds)} | "
                 f"{_mean_sd(dall)} | {sum(d > 0 for d in dall)}/{len(seeds)} |")
  return "\n".join(lines) + "\n"


def plot(runs: dict[str, dict[int, dict]], path: str) -> None:
  """Accuracy (position mean, all tasks) against steps, one line per variant."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for ax, (name, fn) in zip(axes, (("position tasks (spatial, aspect, multi_image)", position_mean),
                                   ("all tasks", lambda r: r["acc"]))):
    for v, by_seed in runs.items():
      steps = sorted(set.intersection(*[set(r) for r in by_seed.values()])) if by_seed else []
      if not steps:
        continue
      acc = np.asarray([[fn(r[s]) for s in steps] for r in by_seed.values()])
      mean, sd = acc.mean(0), acc.std(0, ddof=1) if len(acc) > 1 else np.zeros(len(steps))
      spec = ablation_config.VARIANTS[v]
      ax.plot(steps, mean, marker="o", label=f"{v}: {spec['attention_mask']} + {spec['rope_mode']}"
              + (" θhw=1e6" if spec["rope_theta_hw"] != 1e4 else ""))
      ax.fill_between(steps, mean - sd, mean + sd, alpha=0.15)
    ax.set_title(f"held-out accuracy, {name}", fontsize=10)
    ax.set_xlabel("training step")
    ax.set_ylabel("exact-match accuracy")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv):
  del argv
  workdir, variants = _WORKDIR.value, _VARIANTS.value
  unknown = set(variants) - set(ablation_config.VARIANTS)
  if unknown:
    raise app.UsageError(f"Unknown variants {sorted(unknown)}; known: {sorted(ablation_config.VARIANTS)}.")
  seeds = [int(s) for s in _SEEDS.value.split(",")]
  os.makedirs(workdir, exist_ok=True)
  t0 = time.perf_counter()
  if not _REPORT_ONLY.value:
    # Seed-major order: an interrupted study has whole seeds of every variant.
    for s in seeds:
      for v in variants:
        wall = train_one(workdir, v, s, _STEPS.value, _EVAL_EVERY.value, _EVAL_LIMIT.value)
        if wall:
          with open(os.path.join(workdir, "walltimes.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"variant": v, "seed": s, "wall_s": wall}) + "\n")
  runs = collect(workdir, variants, seeds)
  md = table(runs, _STEPS.value)
  with open(os.path.join(workdir, "ablation.md"), "w", encoding="utf-8") as f:
    f.write(md)
  plot(runs, os.path.join(workdir, "ablation.png"))
  print(md)
  print(f"[ablation] wrote {workdir}/ablation.md and ablation.png; this invocation took "
        f"{time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
  app.run(main)
