"""The figure of the Table 3 study (``bench/ablation.py``): held-out loss (all tasks and
the position tasks), position accuracy and control (digit) accuracy against steps per
variant (thin lines: one seed; thick: the mean over the seeds that reached the step; a
dot: each run's kept evaluation), and the paper's orderings as paired mean differences
of position accuracy and position loss with their 95% intervals. Needs matplotlib."""

from __future__ import annotations

import numpy as np

import ablation_report as rep
import ablation_stats
from neo_jax.configs import ablation as ablation_config

_COLOURS = {"A": "tab:gray", "B": "tab:brown", "D": "tab:purple", "G": "tab:orange",
            "H": "tab:blue", "I": "tab:green"}


def _label(v: str) -> str:
  s = ablation_config.VARIANTS[v]
  return (f"{v}: {s['attention_mask']} + {s['rope_mode']}"
          + (" θhw=1e6" if s["rope_theta_hw"] != 1e4 else ""))


def _curves(ax, runs, name: str, title: str) -> None:
  for v, by_seed in runs.items():
    if not by_seed:
      continue
    c = _COLOURS.get(v)
    steps = sorted({s for r in by_seed.values() for s in r["evals"]})
    for r in by_seed.values():
      xs = sorted(r["evals"])
      ax.plot(xs, [rep.measure(r["evals"][s], name) for s in xs], color=c, lw=0.5, alpha=0.35)
      b = r["done"]["best_step"]
      ax.plot([b], [rep.measure(r["evals"][b], name)], "o", color=c, ms=2.5, alpha=0.6)
    mean = [np.mean([rep.measure(r["evals"][s], name) for r in by_seed.values()
                     if s in r["evals"]]) for s in steps]
    ax.plot(steps, mean, color=c, lw=1.8, label=_label(v))
  ax.set_title(title, fontsize=9)
  ax.set_xlabel("training step", fontsize=8)
  ax.grid(alpha=0.3)
  ax.tick_params(labelsize=7)


def _forest(ax, runs, name: str, title: str) -> None:
  ys, labels = [], []
  for i, (hi, lo) in enumerate(rep.ORDERINGS):
    seeds, a, b = rep.pairs(runs, hi, lo, name)
    labels.append(f"{hi} > {lo} (n={len(seeds)})")
    ys.append(-i)
    if len(seeds) < 2:
      continue
    r = ablation_stats.paired(a, b)
    colour = {"reproduced": "tab:green", "refuted": "tab:red"}.get(r.verdict, "black")
    ax.errorbar([r.mean], [-i], xerr=[[r.mean - r.lo], [r.hi - r.mean]], fmt="o",
                color=colour, capsize=3)
    ax.plot(np.subtract(a, b), np.full(len(a), -i + 0.18), "|", color="gray", ms=5)
  ax.axvline(0, color="k", lw=0.8)
  ax.set_yticks(ys, labels, fontsize=8)
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3, axis="x")
  ax.tick_params(labelsize=7)


def plot(runs: dict[str, dict[int, dict]], path: str) -> None:
  """Writes the 2 x 3 figure to ``path``."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(2, 3, figsize=(17, 8.5))
  _curves(axes[0, 0], runs, "loss", "held-out answer loss, all tasks [nats/token]\n"
          "(early stopping)")
  _curves(axes[0, 1], runs, "position", "held-out accuracy, position tasks (unseen grid sizes)")
  _curves(axes[0, 2], runs, "position_loss", "held-out answer loss, position tasks [nats/token]")
  _curves(axes[1, 0], runs, rep.CONTROL, f"held-out accuracy, {rep.CONTROL} (control)")
  axes[1, 0].axhline(rep.CONTROL_THRESHOLD, color="k", lw=0.6, ls="--")
  _forest(axes[1, 1], runs, "position", "paper's orderings: paired difference of position "
          "accuracy\n(better - worse), 95% paired-t interval (ticks: single seeds)")
  _forest(axes[1, 2], runs, "position_loss", "paper's orderings: paired difference of position "
          "loss\n(worse - better), 95% paired-t interval (ticks: single seeds)")
  axes[0, 1].legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
