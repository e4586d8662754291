"""The NEO paper's Table 3 ablation at CPU scale: every variant x several seeds, each run
stopped early on its held-out loss; paired comparisons with 95% intervals.

    python bench/ablation.py --workdir /tmp/neo_ablation --seeds 0-2 --parallel 2   # the pilot
    python bench/ablation.py --workdir /tmp/neo_ablation --seeds 0-4 --pilot_seeds 0-2 --parallel 2 --out bench/results
    python bench/ablation.py --workdir /tmp/neo_ablation --seeds 0-4 --pilot_seeds 0-2 --report_only --out bench/results

(the study of BUILD_NOTES §0e: the second line, about 1.4 h on 2 cores; the pilot's runs
are its first three seeds, kept; a stopped invocation continues when run again).

Each (variant, seed) is one ``python -m neo_jax.train --config
ablation:variant=V,seed=S,...`` process in ``{workdir}/{V}_s{S}``, seed by seed,
``--parallel`` at a time. While it trains, this script reads its ``metrics.jsonl``; when
the held-out loss has not improved by ``--min_delta`` (relative) for ``--patience`` evaluations it
sends the run SIGTERM (the trainer saves and exits 0, ``train/preemption.py``) and
writes ``done.json``; the evaluation with the lowest held-out loss is the run's result
(``ablation_stats.early_stop``). A run with ``done.json`` is kept; one without resumes
from its last checkpoint (one per evaluation), so a stopped study (SIGTERM or Ctrl-C
here is passed on to the run, which saves) continues where it stopped. Runs of one
seed share the initial parameters and the data order (``train.seed``): the variants
are compared in pairs, seed by seed. The runs share a persistent XLA compilation cache
(``{workdir}/jax_cache``): a variant compiles once.

Writes ``{out}/ablation.md`` (``ablation_report.py``: per-variant held-out accuracy,
per-ordering mean difference with its paired-t 95% interval and number of seeds, the
power reasoning from the ``--pilot_seeds``, the wall time) and ``{out}/ablation.png``
(``ablation_plot.py``). Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ablation_plot  # pylint: disable=wrong-import-position
import ablation_report  # pylint: disable=wrong-import-position
import ablation_stats  # pylint: disable=wrong-import-position
from neo_jax.configs import ablation as ablation_config  # pylint: disable=wrong-import-position

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/neo_ablation", "Parent directory of the runs.")
_OUT = flags.DEFINE_string("out", "", "Where ablation.md / .png go (default: --workdir).")
_VARIANTS = flags.DEFINE_string("variants", "ABDGHI", "Table 3 letters to run.")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Seeds: '0,1,2' or '0-7'.")
_PILOT = flags.DEFINE_string("pilot_seeds", "0,1,2", "Seeds whose spread sizes the study.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 800, "The most steps a run may take.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 80, "Held-out evaluation interval [steps].")
_EVAL_LIMIT = flags.DEFINE_integer("eval_limit", 40, "Held-out examples per task.")
_PATIENCE = flags.DEFINE_integer("patience", 3, "Evaluations without improvement that stop.")
_MIN_DELTA = flags.DEFINE_float("min_delta", 0.01, "Relative improvement that resets patience.")
_MIN_STEP = flags.DEFINE_integer("min_step", 400, "No early stop before this step.")
_POLL_S = flags.DEFINE_float("poll_s", 5.0, "How often a running run's metrics are read [s].")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only aggregate existing runs.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Runs trained at the same time.")

_CHILD: list[subprocess.Popen] = []
_STOP = threading.Event()        # set by a signal or a failed run: start no further run
_T0 = time.time()


def parse_seeds(text: str) -> list[int]:
  """``"0,1,2"`` or ``"0-7"`` (inclusive) -> seeds."""
  out = []
  for part in text.split(","):
    a, _, b = part.strip().partition("-")
    out += list(range(int(a), int(b) + 1)) if b else [int(a)]
  return out


def run_dir(workdir: str, variant: str, seed: int) -> str:
  """``{workdir}/{variant}_s{seed}``."""
  return os.path.join(workdir, f"{variant}_s{seed}")


def records(path: str, kind: str) -> dict[int, dict]:
  """``{step: record}`` of one kind ("eval" / "train") in a run's metrics.jsonl (the
  last record of a step wins: a resumed run repeats the steps after its checkpoint);
  {} when the file is missing."""
  out = {}
  if not os.path.exists(path):
    return out
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        r = json.loads(line)
      except json.JSONDecodeError:       # a line being written
        continue
      if r.get("kind") == kind:
        out[int(r["step"])] = r
  return out


def decide(evals: dict[int, dict]) -> ablation_stats.StopDecision:
  """The early-stopping decision on a run's evaluations so far (the flags' rule)."""
  return ablation_stats.early_stop([(s, r["loss"]) for s, r in evals.items()],
                                   patience=_PATIENCE.value, min_delta=_MIN_DELTA.value,
                                   min_step=_MIN_STEP.value)


def _finish(d: str, evals: dict[int, dict], decision, wall_s: float, cpu_s: float) -> dict:
  """Writes ``{d}/done.json``: why the run ended and the evaluation it keeps."""
  last = max(evals)
  reason = "early_stop" if decision.stop else "max_steps"
  done = {"reason": reason, "last_eval_step": last, "best_step": decision.best_step,
          "since_best": decision.since_best, "wall_s": wall_s, "cpu_s": cpu_s,
          "rule": {"patience": _PATIENCE.value, "min_delta": _MIN_DELTA.value,
                   "min_step": _MIN_STEP.value, "max_steps": _MAX_STEPS.value}}
  with open(os.path.join(d, "done.json"), "w", encoding="utf-8") as f:
    json.dump(done, f, indent=1)
  return done


def train_one(workdir: str, variant: str, seed: int) -> dict | None:
  """Trains one (variant, seed) until the stopping rule or ``--max_steps``; returns its
  ``done.json`` (None when it already existed).

  Raises:
    RuntimeError: the training process failed, or ended before its rule said so.
  """
  d = run_dir(workdir, variant, seed)
  metrics = os.path.join(d, "metrics.jsonl")
  if os.path.exists(os.path.join(d, "done.json")):
    return None
  decision = decide(records(metrics, "eval"))
  if decision.stop:        # stopped before its done.json was written
    return _finish(d, records(metrics, "eval"), decision, 0.0, 0.0)
  if _STOP.is_set():
    return None
  arg = (f"variant={variant},seed={seed},steps={_MAX_STEPS.value},"
         f"eval_every={_EVAL_EVERY.value},eval_limit={_EVAL_LIMIT.value}")
  cmd = [sys.executable, "-m", "neo_jax.train", f"--config=ablation:{arg}",
         f"--workdir={d}"]
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=os.path.join(workdir, "jax_cache"))
  os.makedirs(d, exist_ok=True)
  print(f"[ablation] {variant} seed {seed}: {' '.join(cmd[2:])}", flush=True)
  t0 = time.perf_counter()
  with open(os.path.join(workdir, f"{variant}_s{seed}.log"), "a", encoding="utf-8") as log:
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                         start_new_session=True)   # a terminal's Ctrl-C reaches it via us
    _CHILD.append(p)
    signalled = False
    while True:
      pid, status, usage = os.wait4(p.pid, os.WNOHANG)
      if pid:
        p.returncode = os.waitstatus_to_exitcode(status)
        break
      if not signalled and decide(records(metrics, "eval")).stop:
        p.send_signal(signal.SIGTERM)   # the trainer saves the step it is at, exits 0
        signalled = True
      time.sleep(_POLL_S.value)
    _CHILD.remove(p)
  wall = time.perf_counter() - t0
  cpu = usage.ru_utime + usage.ru_stime
  if p.returncode != 0:
    raise RuntimeError(f"{variant} seed {seed} failed (status {p.returncode}); see "
                       f"{workdir}/{variant}_s{seed}.log")
  evals = records(metrics, "eval")
  decision = decide(evals)
  if not decision.stop and max(evals, default=0) < _MAX_STEPS.value:
    raise RuntimeError(f"{variant} seed {seed} ended at step {max(evals, default=0)} "
                       f"without its stopping rule; see {workdir}/{variant}_s{seed}.log")
  with open(os.path.join(workdir, "walltimes.jsonl"), "a", encoding="utf-8") as f:
    f.write(json.dumps({"variant": variant, "seed": seed, "wall_s": wall, "cpu_s": cpu,
                        "time": time.time()}) + "\n")
  done = _finish(d, evals, decision, wall, cpu)
  print(f"[ablation] {variant} seed {seed}: {done['reason']} at eval step "
        f"{done['last_eval_step']}, kept step {done['best_step']} (acc "
        f"{evals[done['best_step']]['acc']:.3f}, loss {evals[done['best_step']]['loss']:.3f}); "
        f"{wall:.0f} s wall, {cpu:.0f} s CPU", flush=True)
  return done


def predictions(run_path: str, step: int) -> dict[str, list[str]]:
  """``{task: [prediction, ...]}`` of one evaluation (``{run}/eval/predictions_{step}.jsonl``,
  written by ``train/evaluate.py``); {} when the file is missing."""
  out: dict[str, list[str]] = {}
  path = os.path.join(run_path, "eval", f"predictions_{step}.jsonl")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        r = json.loads(line)
        out.setdefault(r["task"], []).append(r["prediction"])
  return out


def collect(workdir: str, variants: str, seeds: list[int]) -> dict[str, dict[int, dict]]:
  """``{variant: {seed: {"evals", "train", "done", "predictions"}}}`` of the finished runs
  (``predictions``: those of the kept evaluation)."""
  out = {}
  for v in variants:
    out[v] = {}
    for s in seeds:
      d = run_dir(workdir, v, s)
      if not os.path.exists(os.path.join(d, "done.json")):
        continue
      with open(os.path.join(d, "done.json"), encoding="utf-8") as f:
        done = json.load(f)
      m = os.path.join(d, "metrics.jsonl")
      out[v][s] = {"evals": records(m, "eval"), "train": records(m, "train"), "done": done,
                   "predictions": predictions(d, done["best_step"])}
  return out


def _log_invocation(workdir: str, status: str) -> None:
  """Appends this invocation's wall time to ``{workdir}/invocations.jsonl`` (the
  study's wall time is their sum: runs trained side by side overlap)."""
  with open(os.path.join(workdir, "invocations.jsonl"), "a", encoding="utf-8") as f:
    f.write(json.dumps({"start": _T0, "wall_s": time.time() - _T0, "status": status,
                        "parallel": _PARALLEL.value, "argv": sys.argv[1:]}) + "\n")


def _on_signal(signum, frame):
  del frame
  _STOP.set()
  for p in list(_CHILD):
    p.send_signal(signal.SIGTERM)
  for p in list(_CHILD):
    p.wait()
  _log_invocation(_WORKDIR.value, f"signal {signum}")
  print(f"[ablation] stopped by signal {signum}; the next invocation resumes.", flush=True)
  os._exit(128 + signum)   # pylint: disable=protected-access  (worker threads hold no state)


def train_all(workdir: str, variants: str, seeds: list[int], parallel: int) -> None:
  """Trains every missing (variant, seed), seed-major (a stopped study has whole seeds of
  every variant), ``parallel`` at a time; the first failure stops new starts and is raised
  once the runs in flight have ended."""
  jobs = [(v, s) for s in seeds for v in variants]

  def one(job):
    try:
      return train_one(workdir, *job)
    except Exception:
      _STOP.set()
      raise

  with futures.ThreadPoolExecutor(max(1, parallel)) as pool:
    done = [pool.submit(one, j) for j in jobs]
  for f in done:
    f.result()


def main(argv):
  del argv
  workdir, variants = _WORKDIR.value, _VARIANTS.value
  unknown = set(variants) - set(ablation_config.VARIANTS)
  if unknown:
    raise app.UsageError(f"Unknown variants {sorted(unknown)}; known: "
                         f"{sorted(ablation_config.VARIANTS)}.")
  seeds, pilot = parse_seeds(_SEEDS.value), parse_seeds(_PILOT.value)
  out = _OUT.value or workdir
  os.makedirs(workdir, exist_ok=True)
  os.makedirs(out, exist_ok=True)
  t0 = time.perf_counter()
  if not _REPORT_ONLY.value:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    train_all(workdir, variants, seeds, _PARALLEL.value)
    _log_invocation(workdir, "trained")
  runs = collect(workdir, variants, seeds)
  rule = {"patience": _PATIENCE.value, "min_delta": _MIN_DELTA.value,
          "min_step": _MIN_STEP.value, "max_steps": _MAX_STEPS.value,
          "eval_every": _EVAL_EVERY.value, "eval_limit": _EVAL_LIMIT.value}
  md = ablation_report.report(runs, pilot, rule, workdir)
  with open(os.path.join(out, "ablation.md"), "w", encoding="utf-8") as f:
    f.write(md)
  ablation_plot.plot(runs, os.path.join(out, "ablation.png"))
  print(md)
  print(f"[ablation] wrote {out}/ablation.md and ablation.png; this invocation took "
        f"{time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
  app.run(main)
