"""Work balance of the context-parallel kernel across sequence shards.

Under context parallelism (``attention_lib.context_parallel_flash_mixed_attention``)
shard ``c`` of ``C`` runs the kernel on query rows ``[c S/C, (c+1) S/C)`` against all
keys and visits only the kv blocks its rows can see, so a causal layout gives the
later shards more blocks. The step waits for the slowest shard; this script counts,
per shard, the (q block, kv block) pairs the kernel visits (forward; dQ and dK/dV
visit the same pairs) and reports ``max / mean`` over shards (1.0 = balanced) for

* ``contiguous``: the layout the project uses (shard c holds chunk c), and
* ``zigzag``: shard c holds chunks c and 2C-1-c of 2C (the "load-balanced" layout of
  MaxText / Megatron context parallelism), to size what such a reordering would buy.

Data: one causal text sample filling the sequence (the worst case) and packed NEO
sequences from ``bench/attention_blocks.packed_neo_batch`` (mean over seeds).

Usage:
  JAX_PLATFORMS=cpu python bench/context_balance.py [--seq 36864] [--block 512]
      [--shards 2,4,8] [--seeds 8]
"""

from __future__ import annotations

import argparse
import os
import sys

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention_blocks import packed_neo_batch  # pylint: disable=g-import-not-at-top,wrong-import-position

from neo_jax.ops import block_ranges as br  # pylint: disable=wrong-import-position


def blocks_per_q_block(seg: np.ndarray, unit: np.ndarray, block: int) -> np.ndarray:
  """Visited kv blocks of each q block of one sequence, ``[S / block] int``."""
  r = br.block_ranges(br.token_bounds(jnp.asarray(seg), jnp.asarray(unit)), block, block)
  return np.asarray(r.kv_hi - r.kv_lo + 1)


def shard_loads(per_block: np.ndarray, shards: int, layout: str) -> np.ndarray:
  """Visited block pairs per shard, ``[shards]``.

  Raises:
    ValueError: the q blocks do not split into ``shards`` (or ``2 * shards``) chunks.
  """
  n = per_block.size
  chunks = shards if layout == "contiguous" else 2 * shards
  if n % chunks:
    raise ValueError(f"{n} q blocks do not split into {chunks} chunks.")
  per_chunk = per_block.reshape(chunks, -1).sum(1)
  if layout == "contiguous":
    return per_chunk
  return per_chunk[:shards] + per_chunk[::-1][:shards]


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--seq", type=int, default=36864)
  ap.add_argument("--block", type=int, default=512)
  ap.add_argument("--shards", default="2,4,8")
  ap.add_argument("--seeds", type=int, default=8)
  args = ap.parse_args()
  shards = [int(x) for x in args.shards.split(",")]
  s = args.seq
  cases = {"one causal text sample": [(np.ones((1, s), np.int32),
                                       np.zeros((1, s), np.int32))]}
  for mix in ("mixed", "image", "video"):
    cases[f"packed {mix}"] = [packed_neo_batch(np.random.default_rng(i), s, mix)
                              for i in range(args.seeds)]
  print(f"seq {s}, block {args.block}: max / mean visited block pairs per shard "
        f"(1.00 = balanced); mean over {args.seeds} seeds for packed data")
  print(f"{'data':26s} " + " ".join(f"{f'C={c} contig':>11s} {f'C={c} zigzag':>11s}"
                                    for c in shards))
  for name, seqs in cases.items():
    per_blocks = [blocks_per_q_block(seg, unit, args.block) for seg, unit in seqs]
    cells = []
    for c in shards:
      for layout in ("contiguous", "zigzag"):
        try:
          ratios = [(lambda x: x.max() / x.mean())(shard_loads(p, c, layout))
                    for p in per_blocks]
          cells.append(f"{np.mean(ratios):11.2f}")
        except ValueError:   # chunks not block-aligned
          cells.append(f"{'n/a':>11s}")
    print(f"{name:26s} " + " ".join(cells))


if __name__ == "__main__":
  main()
