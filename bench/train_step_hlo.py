"""What XLA makes of ``bench/train_step.py``'s step, without running it: op counts, cost.

Compiles the workload's train step the trainer's way (``train.setup.Setup``, state
donated) for each config and prints, from the optimized HLO: the number of
``transpose`` / ``copy`` instructions and of fusions whose root is one, the elements they
write (a transposed write is the pattern issue 16 / 28 removed from the MLP and the
attention projections on XLA:CPU), dots, and XLA's cost analysis (FLOPs, bytes
accessed) and buffer plan (temporaries). Deterministic: fit for a loaded machine, where
timings are not; compare two trees by their ``PYTHONPATH``.

    JAX_PLATFORMS=cpu PYTHONPATH=. python bench/train_step_hlo.py --configs A,B
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step  # pylint: disable=wrong-import-position

_INSTR = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = (\w+)\[([\d,]*)\][^ ]* (\w[\w\-]*)\(")


def hlo_counts(text: str) -> dict:
  """Counts of the optimized HLO's instructions by kind (``transpose``, ``copy``, ``dot``,
  ``fusion``) and the elements written by transposes / copies, fused roots included."""
  counts, elems = collections.Counter(), collections.Counter()
  computations, roots = {}, {}
  name = None
  for line in text.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) ", line)
    if head and line.rstrip().endswith("{"):
      name = head.group(1)
      computations[name] = []
      continue
    m = _INSTR.match(line)
    if m and name:
      dims = [int(d) for d in m.group(2).split(",") if d]
      computations[name].append((m.group(3), math.prod(dims), line))
      if line.lstrip().startswith("ROOT"):
        roots[name] = m.group(3)
  for name, instrs in computations.items():
    for op, n, line in instrs:
      if op in ("transpose", "copy", "dot"):
        counts[op] += 1
        elems[op] += n
      elif op == "fusion":
        callee = re.search(r"calls=%?([\w.\-]+)", line)
        root = roots.get(callee.group(1)) if callee else None
        counts["fusion"] += 1
        if root in ("transpose", "copy"):
          counts[f"fusion_root_{root}"] += 1
          elems[f"fusion_root_{root}"] += n
  return {"counts": dict(counts), "elements_written": dict(elems)}


def analyse(name: str, a) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from neo_jax.train import setup as setup_lib  # pylint: disable=import-outside-toplevel
  config = train_step.make_config(train_step.VOCABS[name], a.impl, a)
  setup = setup_lib.Setup(config, mesh=setup_lib.sharding.make_mesh(
      dict(config.mesh), devices=jax.devices()[:1]))
  compiled = setup.compile_train_step(log=lambda s: None)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  mem = compiled.memory_analysis()
  return dict(hlo_counts(compiled.as_text()), config=name,
              gflop=cost.get("flops", 0.0) / 1e9,
              bytes_accessed_gib=cost.get("bytes accessed", 0.0) / 2 ** 30,
              temp_gib=mem.temp_size_in_bytes / 2 ** 30)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--configs", default="A,B")
  ap.add_argument("--impl", default="auto")
  train_step.add_workload_args(ap, max_visual=128)
  a = ap.parse_args()
  for name in a.configs.split(","):
    print(json.dumps(analyse(name, a)))


if __name__ == "__main__":
  main()
