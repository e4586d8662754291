"""A data audit before a long run: the real pipeline, no model (issue 22).

    python -m neo_jax.data.audit --config neo_ov_2b:stage2 --data mix.yaml \\
        [--batches 50] [--batch_size 1] [--phase 0] [--json audit.json] [--config.key=value ...]

runs the training config's input pipeline (its mixture, processing options,
sequence length (with a context schedule, that of ``--phase``, default the first),
sample limits, workers) for ``--batches`` packed batches and
prints, per source: records read, samples kept, fitted (fewer frames / fewer
pixels), skipped by reason, tokens per sample (p50 / p95 / max), the visual share
of its tokens, and the effective mixture (share of records drawn and of tokens
kept) against the requested weights; then packing efficiency, samples/s and the
peak RSS of the process and its workers. A progress bar runs meanwhile. Exit
status 1 when a source starves (the pipeline's ``SourceStarvedError``, or a source
that kept nothing), 2 for a usage error (no such file, bad mixture), else 0.

The trainer logs the same table once after ``data.audit_batches`` batches
(``summary_table``).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from neo_jax.core import host_memory


def _pct(x: float) -> str:
  return f"{100 * x:.1f}%"


def requested_weights(data_cfg) -> dict[str, float]:
  """``{source: weight / sum of weights}`` over the sources with a positive weight."""
  w = {n: float(data_cfg.sources[n].weight) for n in data_cfg.sources
       if float(data_cfg.sources[n].weight) > 0}
  total = sum(w.values()) or 1.0
  return {n: v / total for n, v in w.items()}


def summary_table(summary: dict[str, dict[str, Any]], weights: dict[str, float]) -> str:
  """The per-source table of ``SourceMonitor.summary()`` as text.

  Columns: records read, kept, fitted (frames / pixels), skipped (by reason),
  tokens p50 / p95 / max, visual share, requested weight, share of records drawn,
  share of kept tokens.
  """
  all_records = sum(s["records"] for s in summary.values()) or 1
  all_tokens = sum(s["tokens"] for s in summary.values()) or 1
  head = (f"{'source':<20} {'records':>8} {'kept':>8} {'fit fr/px':>11} {'skipped':>8} "
          f"{'tok p50':>8} {'p95':>7} {'max':>7} {'visual':>7} {'weight':>7} {'drawn':>7} "
          f"{'tokens':>7}  skip reasons")
  lines = [head, "-" * len(head)]
  for name in sorted(set(summary) | set(weights)):
    s = summary.get(name, {"records": 0, "kept": 0, "tokens": 0, "fit": {}, "skip": {},
                           "tokens_p50": 0, "tokens_p95": 0, "tokens_max": 0,
                           "visual_share": 0.0})
    skipped = sum(s["skip"].values())
    fit = f"{s['fit'].get('frames', 0)}/{s['fit'].get('pixels', 0)}"
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["skip"].items(), key=lambda kv: -kv[1]))
    lines.append(
        f"{name[:20]:<20} {s['records']:>8} {s['kept']:>8} {fit:>11} {skipped:>8} "
        f"{s['tokens_p50']:>8} {s['tokens_p95']:>7} {s['tokens_max']:>7} "
        f"{_pct(s['visual_share']):>7} {_pct(weights.get(name, 0.0)):>7} "
        f"{_pct(s['records'] / all_records):>7} {_pct(s['tokens'] / all_tokens):>7}  {reasons}")
  return "\n".join(lines)


def starving(summary: dict[str, dict[str, Any]], weights: dict[str, float],
             min_records: int = 20) -> list[str]:
  """Sources with a positive weight that read ``min_records`` records and kept none."""
  return [n for n in weights if summary.get(n, {}).get("records", 0) >= min_records
          and summary[n]["kept"] == 0]


def run_audit(config, *, batches: int, batch_size: int, progress: bool = True,
              phase: int = 0) -> dict:
  """Runs the config's pipeline for ``batches`` batches of ``batch_size`` rows.

  Args:
    config: a training config (``data.kind == "pipeline"``).
    phase: the context-schedule phase whose length to pack at (``core/context_schedule.py``).
  Returns:
    ``{"sources": per-source summary, "weights", "batches", "samples",
    "packing_efficiency", "samples_per_s", "peak_rss_bytes", "workers_peak_rss_bytes",
    "wall_s", "starved": error message or ""}``.
  Raises:
    ValueError / FileNotFoundError: a bad config or mixture (from the pipeline).
  """
  from neo_jax.data import mixture, pipeline  # pylint: disable=g-import-not-at-top
  from neo_jax.data.errors import SourceStarvedError  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  from neo_jax.core import context_schedule  # pylint: disable=g-import-not-at-top
  data_cfg = mixture.apply_mixture(config.data)
  m = config.model
  phases = context_schedule.phases(config)
  if not 0 <= phase < len(phases):
    raise ValueError(f"--phase {phase}: the config has {len(phases)} context phase(s): "
                     f"{context_schedule.describe(config)}.")
  seq_len = phases[phase].seq_len
  it = pipeline.make_train_iterator(
      data_cfg, seq_len=seq_len, batch_size=batch_size,
      max_supervised_tokens=m.get("max_supervised_tokens", 0), seed=config.train.seed,
      max_sample_tokens=m.get("max_sample_tokens", 0),
      max_visual_tokens=m.get("max_visual_tokens", 0))
  t0 = time.perf_counter()
  starved, done = "", 0
  bar = tqdm.tqdm(total=batches, desc="audit", unit="batch", disable=not progress,
                  file=sys.stderr)
  try:
    for _ in range(batches):
      next(it)
      done += 1
      st = it.stats()
      bar.set_postfix(samples=st.get("samples", 0), refresh=False)
      bar.update(1)
  except SourceStarvedError as e:
    starved = str(e)
  except StopIteration:
    pass
  finally:
    bar.close()
  wall = time.perf_counter() - t0
  st = it.stats()
  own, kids = host_memory.peak_rss_bytes()
  return {"sources": it.monitor.summary(), "weights": requested_weights(data_cfg),
          "batches": done, "samples": st.get("samples", 0),
          "packing_efficiency": pipeline.packing_efficiency(it),
          "samples_per_s": st.get("samples", 0) / max(wall, 1e-9),
          "peak_rss_bytes": own, "workers_peak_rss_bytes": kids, "wall_s": wall, "seq_len": seq_len,
          "starved": starved}


def report_text(r: dict) -> str:
  """``run_audit``'s result as the printed report."""
  out = [summary_table(r["sources"], r["weights"]),
         f"{r['seq_len']}-token rows: batches {r['batches']}, samples {r['samples']}, "
         f"packing efficiency "
         f"{_pct(r['packing_efficiency'])}, {r['samples_per_s']:.2f} samples/s, "
         f"peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB (workers "
         f"{r['workers_peak_rss_bytes'] / 2**30:.2f} GiB), {r['wall_s']:.0f} s"]
  bad = starving(r["sources"], r["weights"])
  if r["starved"]:
    out.append("STARVING: " + r["starved"])
  elif bad:
    out.append(f"STARVING: sources {bad} read records but kept no sample.")
  return "\n".join(out)


def main(argv) -> int:
  """The CLI (module docstring); returns the exit status."""
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  config = f.config
  if f.data:
    with config.unlocked():
      config.data.mixture = f.data
  if config.data.get("kind", "random") != "pipeline":
    print(f"error: the config's data.kind is {config.data.get('kind')!r}; the audit reads "
          "a data pipeline (data.kind = 'pipeline').", file=sys.stderr)
    return 2
  try:
    r = run_audit(config, batches=f.batches, batch_size=f.batch_size, progress=True,
                  phase=f.phase)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(report_text(r), flush=True)
  if f.json:
    from neo_jax.core import paths  # pylint: disable=g-import-not-at-top
    paths.write_text(f.json, json.dumps(r, indent=2))
  return 1 if (r["starved"] or starving(r["sources"], r["weights"])) else 0


if __name__ == "__main__":
  from neo_jax import platform as _platform  # pylint: disable=g-import-not-at-top
  _platform.select_default_platform()
  _platform.guard_network()
  from absl import app, flags as _flags  # pylint: disable=g-import-not-at-top
  from neo_jax import configs  # pylint: disable=g-import-not-at-top
  configs.define_flag("config")
  _flags.DEFINE_string("data", None, "A data mixture file (sets data.mixture).")
  _flags.DEFINE_integer("batches", 50, "Packed batches to read.")
  _flags.DEFINE_integer("batch_size", 1, "Rows per batch (a host's share of the global batch).")
  _flags.DEFINE_integer("phase", 0, "Context-schedule phase whose row length to use.")
  _flags.DEFINE_string("json", None, "Also write the result as JSON here.")
  _flags.mark_flags_as_required(["config"])
  app.run(lambda argv: sys.exit(main(argv)))
