"""Block-sparsity and compiled cost of the mixed-mask kernel on typical packed NEO batches.

For packed sequences of 4K / 16K / 36K tokens (text, images of 256..1024 visual
tokens, videos of 8..32 frames of 64..256 tokens, several samples per sequence,
trailing padding) it reports:

* kv blocks the kernel visits vs blocks holding >= 1 visible pair (goal <= 1.05x) vs
  all blocks (dense), and the blocks that skip the mask arithmetic;
* the TPU kernels' grid steps per (batch row, query head) against the visited
  blocks: before the flattened schedule (issue 28) the grids walked q blocks x
  ``block_ranges.kv_step_bound`` steps (forward / dQ) and kv blocks x
  ``q_step_bound`` (dK / dV), without a sample cap and with the cap of the mix (the
  longest sample its generator can make, rounded up to 512:
  ``model.max_sample_tokens``); now each runs its schedule's real count of pairs
  (``block_ranges.flat_schedule``, built here exactly as the kernels build it) out
  of a static list of ``block_ranges.pair_bound`` entries (the capacity, with the
  cap);
* the XLA ``cost_analysis()`` of forward + backward compiled for one TPU chip (AOT,
  ``jax.experimental.topologies``, needs libtpu) for the kernel and for the dense
  masked reference compiled the same way. The kernel's custom calls carry a static
  causal-pattern hint capped by the schedule's capacity
  (``flash_mixed_tpu_common.cost``), so the table also gives the data-dependent
  figure: visited blocks x per-block flops.

Usage:
  JAX_PLATFORMS=cpu python bench/attention_blocks.py [--topology v5p:1x1x1]
      [--block 512] [--lengths 4096,16384,36864] [--no-compile]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from neo_jax.ops import attention as attention_lib
from neo_jax.ops import block_ranges as br
from neo_jax.ops import flash_mixed
from neo_jax.train import health


def packed_neo_batch(rng: np.random.Generator, seq: int, mix: str):
  """One packed sequence of NEO samples.

  Args:
    rng: numpy generator.
    seq: tokens in the sequence.
    mix: "image" (1-3 images of 256..1024 tokens + 20..600 text tokens per sample),
      "video" (8..32 frames of 64..256 tokens + text) or "mixed" (image, video and
      text-only samples).

  Returns:
    ``(segment_ids, unit_ids)``, ``[1, seq] int32``.
  """
  seg = np.zeros(seq, np.int32)
  unit = np.zeros(seq, np.int32)
  pos, s_id, u_id, misses = 0, 1, 1, 0
  while misses < 20:
    kind = mix if mix != "mixed" else rng.choice(["image", "video", "text"])
    parts = [("text", int(rng.integers(10, 60)))]            # system / prompt
    if kind == "image":
      for _ in range(int(rng.integers(1, 4))):
        parts += [("unit", int(rng.integers(256, 1025))), ("text", 2)]
    elif kind == "video":
      for _ in range(int(rng.integers(8, 33))):
        parts += [("unit", int(rng.choice([64, 144, 256]))), ("text", 2)]
    parts.append(("text", int(rng.integers(20, 600))))       # answer
    n = sum(p[1] for p in parts)
    if pos + n > seq:                    # does not fit: try another, then pad
      misses += 1
      continue
    for what, size in parts:
      seg[pos:pos + size] = s_id
      if what == "unit":
        unit[pos:pos + size] = u_id
        u_id += 1
      pos += size
    s_id += 1
  return seg[None], unit[None]


# The longest sample each mix can make (prompt 59 + units + separators + answer 599),
# rounded up to a multiple of 512: the cap a user of such data would set.
MIX_CAP = {"image": 4096, "video": 9216, "mixed": 9216}


def grid_steps(seq: int, bq: int, bk: int, cap: int) -> tuple[int, int]:
  """Before the flattened schedule: (forward / dQ grid steps, dK / dV grid steps) per
  (batch row, head) for ``cap`` (q blocks x kv steps, kv blocks x q steps)."""
  nq, nk = seq // bq, seq // bk
  return nq * br.kv_step_bound(cap, bq, bk, nk), nk * br.q_step_bound(cap, bq, bk, nq)


def schedule_steps(seg, unit, bq: int, bk: int, cap: int) -> tuple[int, int, int]:
  """Now: (q-major steps, kv-major steps, capacity) per (batch row, head) for ``cap``.

  The kernels' grids are (query head, q-major count) for the forward and dQ and
  (kv head, kv-major count, group) for dK / dV: per query head, the count. Raises if
  the schedule overflows (the kernels would NaN).
  """
  seq = seg.shape[1]
  nq, nk = seq // bq, seq // bk
  r = br.block_ranges(br.token_bounds(jnp.asarray(seg), jnp.asarray(unit)), bq, bk)
  capacity = br.pair_bound(cap, bq, bk, nq, nk)
  by_q = br.flat_schedule(r.kv_lo, r.kv_hi, capacity, nk)
  by_kv = br.flat_schedule(r.q_lo, r.q_hi, capacity, nq)
  for s in (by_q, by_kv):
    assert int(s.total) <= capacity, (int(s.total), capacity)
  return int(by_q.count), int(by_kv.count), capacity


def compiled_cost(topology: str, fn, *shapes):
  """Flops / bytes of ``fn`` forward + backward AOT-compiled for one chip."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  topo = topologies.get_topology_desc(topology, "tpu", chips_per_host_bounds=(1, 1, 1))
  sh = jax.sharding.SingleDeviceSharding(topo.devices[0])
  args = [jax.ShapeDtypeStruct(s, d, sharding=sh) for s, d in shapes]
  loss = lambda q, k, v, seg, unit: jnp.sum(fn(q, k, v, seg, unit).astype(jnp.float32))
  try:
    c = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(*args).compile()
  except Exception as e:  # pylint: disable=broad-except
    return {"error": str(e).splitlines()[0][:120]}
  ca = c.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  mem = c.memory_analysis()
  return {"flops": ca.get("flops", 0.0), "bytes": ca.get("bytes accessed", 0.0),
          "temp_gib": mem.temp_size_in_bytes / 2**30 if mem else float("nan")}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--topology", default="v5p:1x1x1")
  ap.add_argument("--block", type=int, default=512)
  ap.add_argument("--lengths", default="4096,16384,36864")
  ap.add_argument("--heads", type=int, default=16)
  ap.add_argument("--head_dim", type=int, default=128)
  ap.add_argument("--no-compile", action="store_true")
  a = ap.parse_args()
  bq = bk = a.block
  h, d = a.heads, a.head_dim
  rng = np.random.default_rng(0)
  print(f"block {bq}x{bk}, {h} heads, q/k width {2 * d}, v width {d}, bf16, "
        f"one sequence per batch")
  print(f"{'seq':>6} {'mix':>6} {'samples':>7} {'real%':>5} {'visited':>8} {'nonempty':>8} "
        f"{'ratio':>6} {'full':>6} {'dense':>7} {'visit/dense':>11}")
  grids = []
  for seq in [int(x) for x in a.lengths.split(",")]:
    for mix in ("image", "video", "mixed"):
      seg, unit = packed_neo_batch(rng, seq, mix)
      c = br.block_counts(jnp.asarray(seg), jnp.asarray(unit), bq, bk)
      print(f"{seq:>6} {mix:>6} {seg.max():>7} {100 * (seg > 0).mean():>5.1f} "
            f"{c['visited']:>8} {c['nonempty']:>8} {c['visited'] / c['nonempty']:>6.3f} "
            f"{c['full']:>6} {c['dense']:>7} {c['visited'] / c['dense']:>11.3f}")
      longest = health.longest_sample(seg)
      grids.append((seq, mix, longest, c["nonempty"], grid_steps(seq, bq, bk, 0),
                    grid_steps(seq, bq, bk, MIX_CAP[mix]),
                    schedule_steps(seg, unit, bq, bk, MIX_CAP[mix]),
                    schedule_steps(seg, unit, bq, bk, 0)[2]))
  print("\nTPU grid steps per (row, head) vs the blocks with a visible pair. Before "
        "(bounded grids): forward / dQ and dK / dV without a sample cap and with the "
        "mix's cap. Now (flattened schedule, with the cap): steps of forward = dQ "
        "(q-major) and dK / dV (kv-major), the schedule's static capacity")
  print(f"{'seq':>6} {'mix':>6} {'longest':>7} {'cap':>5} {'visited':>7} "
        f"{'fwd no cap':>10} {'fwd cap':>8} {'dkv no cap':>10} {'dkv cap':>8} "
        f"{'before/vis':>10} {'fwd,dq now':>10} {'dkv now':>8} {'now/vis':>7} "
        f"{'capacity':>8} {'no cap':>7}")
  for seq, mix, longest, visited, (f0, d0), (f1, d1), (fq, fk, capacity), cap0 in grids:
    assert longest <= MIX_CAP[mix], (mix, longest)
    print(f"{seq:>6} {mix:>6} {longest:>7} {MIX_CAP[mix]:>5} {visited:>7} {f0:>10} {f1:>8} "
          f"{d0:>10} {d1:>8} {f1 / visited:>10.2f} {fq:>10} {fk:>8} "
          f"{max(fq, fk) / visited:>7.3f} {capacity:>8} {cap0:>7}")
  if a.no_compile:
    return
  print(f"\nXLA cost_analysis, fwd+bwd AOT-compiled for {a.topology} (one chip)")
  print(f"{'seq':>6} {'impl':>22} {'GFLOP':>10} {'GB accessed':>12} {'temp GiB':>9} "
        f"{'compile s':>9}")
  for seq in [int(x) for x in a.lengths.split(",")]:
    shapes = [((1, seq, h, 2 * d), jnp.bfloat16), ((1, seq, h, 2 * d), jnp.bfloat16),
              ((1, seq, h, d), jnp.bfloat16), ((1, seq), jnp.int32), ((1, seq), jnp.int32)]
    kern = lambda q, k, v, s, u: flash_mixed.flash_mixed_attention(
        q, k, v, s, u, scale=d ** -0.5, block_q=bq, block_kv=bk, interpret=False)
    capped = lambda q, k, v, s, u: flash_mixed.flash_mixed_attention(
        q, k, v, s, u, scale=d ** -0.5, block_q=bq, block_kv=bk, interpret=False,
        max_sample_tokens=MIX_CAP["image"])
    dense = lambda q, k, v, s, u: attention_lib.reference_attention(
        q, k, v, s, u, scale=d ** -0.5)
    for name, fn in (("kernel (causal hint)", kern), ("kernel, cap 4096", capped),
                     ("dense masked (XLA)", dense)):
      t0 = time.time()
      r = compiled_cost(a.topology, fn, *shapes)
      dt = time.time() - t0
      if "error" in r:
        print(f"{seq:>6} {name:>22}  compile failed: {r['error']}")
      else:
        print(f"{seq:>6} {name:>22} {r['flops'] / 1e9:>10.1f} {r['bytes'] / 1e9:>12.2f} "
              f"{r['temp_gib']:>9.2f} {dt:>9.1f}")
    # Data-dependent kernel flops for the "mixed" batch: visited blocks x per block.
    seg, unit = packed_neo_batch(np.random.default_rng(seq), seq, "mixed")
    c = br.block_counts(jnp.asarray(seg), jnp.asarray(unit), bq, bk)
    per_block = 2 * bq * bk * ((2 * d + d) + (2 * 2 * d + d) + 2 * (2 * d + d))
    print(f"{seq:>6} {'kernel (data, mixed)':>22} {c['visited'] * h * per_block / 1e9:>10.1f}"
          f"   ({c['visited']} of {c['dense']} blocks visited)")


if __name__ == "__main__":
  main()
