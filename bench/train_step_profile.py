"""Where the trainer's step spends its time on XLA:CPU: per-operation times from a trace.

Builds the step of ``bench/train_step.py``'s workload (config A or B) the way the
trainer does (``Setup.compile_train_step``), runs it under ``jax.profiler.trace``
and sums the trace's complete events by name: on XLA:CPU every executed thunk (a
fusion, a dot, a copy, a while loop) is one event, named as in the optimized HLO
(``ynn_fusion.65``). Prints the top operations in milliseconds per step with their
call count per step, each with its HLO shape and the JAX operation it came from, and
writes the optimized HLO beside the trace so any name can be looked up.

    JAX_PLATFORMS=cpu PYTHONPATH=. python bench/train_step_profile.py --config B \
        --max_visual 128 --out /tmp/neo_profile_B

Times are wall-clock inside a traced run (the tracer costs a few percent): compare
operations within one run, and steps between runs on an idle machine only. Events of
operations inside a loop body are counted per iteration; a ``while`` event contains
its body's events (do not add the two).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step  # pylint: disable=wrong-import-position

_SKIP = ("ThunkExecutor", "$", "SlinkyThreadPool")   # executor / Python frames


def op_times(trace_dir: str, steps: int) -> list[tuple[str, float, int]]:
  """``[(event name, ms per step, calls per step)]``, largest first, from the Perfetto
  trace ``jax.profiler.trace(create_perfetto_trace=True)`` wrote under ``trace_dir``.

  Raises:
    FileNotFoundError: no trace file there.
  """
  files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  if not files:
    raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}")
  with gzip.open(files[0]) as f:
    events = json.load(f)["traceEvents"]
  total, calls = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(_SKIP):
      total[e["name"]] += e.get("dur", 0)       # microseconds
      calls[e["name"]] += 1
  return [(n, us / 1e3 / steps, calls[n] // steps) for n, us in total.most_common()]


def hlo_index(hlo: str) -> dict[str, tuple[str, str]]:
  """``{instruction name: (shape, JAX op_name)}`` of an optimized HLO module's text."""
  out = {}
  for line in hlo.splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.-]+) = (\S+) ", line)
    if m:
      op = re.search(r'op_name="([^"]*)"', line)
      out.setdefault(m.group(1), (m.group(2), op.group(1) if op else ""))
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="B", choices=sorted(train_step.VOCABS))
  ap.add_argument("--impl", default="auto")
  train_step.add_workload_args(ap, max_visual=128)
  ap.add_argument("--steps", type=int, default=3, help="traced steps (after 2 untraced)")
  ap.add_argument("--top", type=int, default=40)
  ap.add_argument("--out", default="/tmp/neo_profile")
  a = ap.parse_args()
  import jax  # pylint: disable=import-outside-toplevel
  from neo_jax.train import setup as setup_lib  # pylint: disable=import-outside-toplevel
  config = train_step.make_config(train_step.VOCABS[a.config], a.impl, a)
  setup = setup_lib.Setup(config, mesh=setup_lib.sharding.make_mesh(
      dict(config.mesh), devices=jax.devices()[:1]))
  state = setup.init_state(0)
  step = setup.compile_train_step(log=lambda s: None)
  batch = jax.device_put(train_step.workload_batch(a.seq, train_step.VOCABS[a.config],
                                                   config.model), setup.batch_shardings)
  for _ in range(2):
    state, _ = step(state, batch)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(a.steps):
    state, _ = step(state, batch)
  jax.block_until_ready(state)
  untraced = (time.perf_counter() - t0) / a.steps
  trace_dir = os.path.join(a.out, "trace")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(a.steps):
      state, _ = step(state, batch)
    jax.block_until_ready(state)
  hlo = step.as_text()
  with open(os.path.join(a.out, "step.hlo.txt"), "w", encoding="utf-8") as f:
    f.write(hlo)
  index = hlo_index(hlo)
  print(f"config {a.config}, impl {a.impl}: {untraced:.3f} s a step untraced "
        f"(mean of {a.steps}); trace {trace_dir}, HLO {a.out}/step.hlo.txt")
  print("| ms / step | calls / step | operation | shape | from |")
  print("|---|---|---|---|---|")
  for name, ms, n in op_times(trace_dir, a.steps)[:a.top]:
    shape, op = index.get(name, ("", ""))
    print(f"| {ms:.1f} | {n} | {name} | {shape} | {'/'.join(op.split('/')[-3:])} |")


if __name__ == "__main__":
  main()
