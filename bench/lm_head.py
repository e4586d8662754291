"""LM head + cross entropy: full fp32 logits vs chunked, vs gathered supervised positions.

docs/design.md §3.6 performance note. For a [tokens, D] hidden block and the 151936-row
vocabulary, compiles forward+backward of three variants on the CPU and reports
the compiled temporary memory (XLA memory_analysis), the matmul FLOPs (counted
analytically: XLA's cost analysis counts a scan body once) and the measured
wall time, as ratios to the full-logits baseline of the same run.

    JAX_PLATFORMS=cpu PYTHONPATH=. python bench/lm_head.py --tokens 2048 --hidden 256 --supervised 256
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from neo_jax.model import loss as loss_lib


def full_ce(hidden, head, target, weight):
  logits = jnp.einsum("nd,vd->nv", hidden, head, preferred_element_type=jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  tgt = jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]
  return jnp.sum(weight * (lse - tgt))


def chunked_ce(hidden, head, target, weight, chunk):
  return jnp.sum(weight * loss_lib.chunked_cross_entropy(hidden, head, target, chunk=chunk))


def measure(fn, args, reps, flops):
  g = jax.jit(jax.grad(fn, argnums=(0, 1)))
  compiled = g.lower(*args).compile()
  mem = compiled.memory_analysis()
  jax.block_until_ready(compiled(*args))
  t0 = time.perf_counter()
  for _ in range(reps):
    out = compiled(*args)
  jax.block_until_ready(out)
  return dict(temp_mb=mem.temp_size_in_bytes / 2**20, gflop=flops / 1e9,
              time_s=(time.perf_counter() - t0) / reps)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--tokens", type=int, default=2048)
  p.add_argument("--hidden", type=int, default=256)
  p.add_argument("--vocab", type=int, default=151936)
  p.add_argument("--supervised", type=int, default=256, help="gathered positions M")
  p.add_argument("--chunk", type=int, default=16384)
  p.add_argument("--reps", type=int, default=3)
  a = p.parse_args()
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.standard_normal((a.tokens, a.hidden)), jnp.float32)
  w = jnp.asarray(0.02 * rng.standard_normal((a.vocab, a.hidden)), jnp.float32)
  t = jnp.asarray(rng.integers(0, a.vocab, a.tokens), jnp.int32)
  wt = jnp.ones((a.tokens,), jnp.float32)
  m = a.supervised
  # Forward 2NVD, backward 4NVD; the chunked loop recomputes its forward (+2NVD).
  nvd = lambda n: n * a.vocab * a.hidden
  rows = {
      "full logits (all tokens)": measure(full_ce, (h, w, t, wt), a.reps, 6 * nvd(a.tokens)),
      f"chunked {a.chunk} (all tokens)": measure(
          lambda h, w, t, wt: chunked_ce(h, w, t, wt, a.chunk), (h, w, t, wt), a.reps, 8 * nvd(a.tokens)),
      f"gathered M={m} + chunked": measure(
          lambda h, w, t, wt: chunked_ce(h, w, t, wt, a.chunk), (h[:m], w, t[:m], wt[:m]), a.reps,
          8 * nvd(m)),
  }
  base = rows["full logits (all tokens)"]
  print(f"tokens={a.tokens} hidden={a.hidden} vocab={a.vocab} backend={jax.default_backend()}")
  print(f"| variant | temp MiB | x base | GFLOP | x base | time s | x base |")
  print("|---|---|---|---|---|---|---|")
  for name, r in rows.items():
    print(f"| {name} | {r['temp_mb']:.0f} | {r['temp_mb'] / base['temp_mb']:.3f} | "
          f"{r['gflop']:.1f} | {r['gflop'] / max(base['gflop'], 1e-9):.3f} | {r['time_s']:.3f} | "
          f"{r['time_s'] / base['time_s']:.3f} |")


if __name__ == "__main__":
  main()
