"""The blockwise attention's single-block step against its per-row loop, on XLA:CPU.

When a sequence is one q block and one kv block (prompts, evaluation rows, short
training rows), ``ops/flash_blockwise.py`` can run the forward as one batched step
over all rows (``_fwd_one_block``) instead of its loop over rows (``lax.map``, one kv
iteration each). Which is faster depends on the size of the score array: this bench
times both, compiled in one process and called alternately (medians of ``--reps``),
forward alone and forward + backward (the backward is the loop in both), for each
shape ``B x S x Hq`` (Hkv = Hq / 2, ``--head_dim``). The float32 score array of a
shape is ``B * Hq * S^2 * 4`` bytes; ``flash_blockwise.ONE_BLOCK_SCORE_BYTES`` (under
``jax.grad``) and ``ONE_BLOCK_SCORE_BYTES_PRIMAL`` (a plain call) are the budgets up to
which the model takes the batched step.

    JAX_PLATFORMS=cpu PYTHONPATH=. python bench/attention_one_block.py \
        --shapes 8x112x4,1x512x4,2x512x4,8x256x4,4x512x4,8x512x4

Timings are only meaningful on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))


def measure(b: int, s: int, hq: int, head_dim: int, reps: int) -> dict:
  """Median times [ms] of the two forms for one shape (random packed ids, float32)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from neo_jax.ops import flash_blockwise as fb  # pylint: disable=import-outside-toplevel
  from testlib.attention import random_packed_ids  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  seg, unit = (jnp.asarray(x) for x in random_packed_ids(rng, b, s))
  hkv = max(1, hq // 2)
  q = jnp.asarray(rng.normal(size=(b, s, hq, 2 * head_dim)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(b, s, hkv, 2 * head_dim)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(b, s, hkv, head_dim)), jnp.float32)
  block = -(-s // 8) * 8

  def loss(q, k, v):
    o = fb.blockwise_attention(q, k, v, seg, unit, scale=head_dim ** -0.5,
                               block_q=block, block_kv=block)
    return jnp.sum(o * o)

  budgets = fb.ONE_BLOCK_SCORE_BYTES, fb.ONE_BLOCK_SCORE_BYTES_PRIMAL
  programs = {}
  try:
    for form, limit in (("loop", 0), ("batched", 1 << 62)):
      fb.ONE_BLOCK_SCORE_BYTES = fb.ONE_BLOCK_SCORE_BYTES_PRIMAL = limit  # read when traced
      programs[form] = (jax.jit(loss).lower(q, k, v).compile(),
                        jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile())
  finally:
    fb.ONE_BLOCK_SCORE_BYTES, fb.ONE_BLOCK_SCORE_BYTES_PRIMAL = budgets
  scores = b * hq * block * block * 4
  times = {(f, p): [] for f in programs for p in ("fwd", "fwd+bwd")}
  for _ in range(reps):
    for form, (fwd, both) in programs.items():
      for part, fn in (("fwd", fwd), ("fwd+bwd", both)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(q, k, v))
        times[(form, part)].append(time.perf_counter() - t0)
  out = {"shape": f"{b}x{s}x{hq}", "score_mib": scores / 2 ** 20,
         "batched_primal": scores <= budgets[1], "batched_differentiated": scores <= budgets[0]}
  for (form, part), ts in times.items():
    out[f"{form}_{part}_ms"] = 1e3 * float(np.median(ts))
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--shapes", default="8x112x4,1x512x4,2x512x4,8x256x4,4x512x4,8x512x4",
                  help="comma-separated B x S x Hq")
  ap.add_argument("--head_dim", type=int, default=32)
  ap.add_argument("--reps", type=int, default=15)
  a = ap.parse_args()
  from neo_jax.ops import flash_blockwise as fb  # pylint: disable=import-outside-toplevel
  print(f"budgets: differentiated {fb.ONE_BLOCK_SCORE_BYTES / 2 ** 20:.1f} MiB, primal "
        f"{fb.ONE_BLOCK_SCORE_BYTES_PRIMAL / 2 ** 20:.1f} MiB; head_dim {a.head_dim}; medians "
        f"of {a.reps} alternating calls")
  print("| B x S x Hq | scores MiB | batched (plain call / under grad) | loop fwd ms | "
        "batched fwd ms | batched / loop | loop fwd+bwd ms | batched fwd+bwd ms | "
        "batched / loop |")
  print("|---|---|---|---|---|---|---|---|---|")
  for shape in a.shapes.split(","):
    b, s, hq = (int(x) for x in shape.split("x"))
    r = measure(b, s, hq, a.head_dim, a.reps)
    yes = lambda x: "yes" if x else "no"
    print(f"| {r['shape']} | {r['score_mib']:.1f} | {yes(r['batched_primal'])} / "
          f"{yes(r['batched_differentiated'])} "
          f"| {r['loop_fwd_ms']:.2f} | {r['batched_fwd_ms']:.2f} | "
          f"{r['batched_fwd_ms'] / r['loop_fwd_ms']:.2f} | {r['loop_fwd+bwd_ms']:.2f} | "
          f"{r['batched_fwd+bwd_ms']:.2f} | "
          f"{r['batched_fwd+bwd_ms'] / r['loop_fwd+bwd_ms']:.2f} |", flush=True)


if __name__ == "__main__":
  main()
