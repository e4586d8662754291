"""Throughput of the data pipeline (not a test).

Reports, for each worker count: samples/s, packed (non-padding) tokens/s,
batches/s and packing efficiency (non-padding tokens / all positions).
The first ``--warmup`` batches (worker start-up, caches) are not timed.

On the embedded mixture:

  python bench/data_throughput.py --seq_len 4096 --batch_size 4 --batches 30 --workers 0,2

On realistic records (``bench/realistic_corpus.py``: 1-4 MP JPEG photos, 2-4
photo records, 20-60 s H.264 clips, text; NEO-ov's 2 : 4 : 1 : 1 by modality;
the stage-2 recipe's pixel budgets, 16.7M pixels per image / video, 128 frames,
1 fps):

  python bench/data_throughput.py --realistic /tmp/neo_realistic --seq_len 16384 \
      --batch_size 1 --batches 20 --workers 0,2
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from neo_jax.data import pipeline


def realistic_config(root: str):
  """The data config of the realistic corpus under ``root`` (built when missing)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from neo_jax.data import mixture  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import realistic_corpus  # pylint: disable=import-outside-toplevel
  cfg = pipeline.default_data_config()
  cfg.mixture = realistic_corpus.build(root)
  cfg.modality_weights = ml_collections.ConfigDict(
      {"text": 2.0, "image": 4.0, "multi_image": 1.0, "video": 1.0})
  o = cfg.options
  o.min_pixels, o.max_pixels = 65536, 16777216
  o.video_max_pixels, o.max_frames, o.video_fps = 16777216, 128, 1.0
  return mixture.apply_mixture(cfg)


def run(workers: int, seq_len: int, batch_size: int, batches: int, warmup: int, packing: str,
        max_sup: int, seed: int, realistic: str = "") -> dict:
  cfg = realistic_config(realistic) if realistic else pipeline.default_data_config()
  cfg.num_workers = workers
  cfg.packing = packing
  it = pipeline.make_train_iterator(cfg, seq_len=seq_len, batch_size=batch_size,
                                    max_supervised_tokens=max_sup, seed=seed)
  for _ in range(warmup):
    next(it)
  s0 = it.stats()
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  dt = time.perf_counter() - t0
  s1 = it.stats()
  samples = s1["samples"] - s0.get("samples", 0)
  tokens = s1["tokens"] - s0.get("tokens", 0)
  cap = s1["capacity"] - s0.get("capacity", 0)
  return {"workers": workers, "samples_per_s": samples / dt, "tokens_per_s": tokens / dt,
          "batches_per_s": batches / dt, "packing_efficiency": tokens / cap,
          "samples_per_batch": samples / batches, "skips": pipeline.skip_counts(it)}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--seq_len", type=int, default=4096)
  p.add_argument("--batch_size", type=int, default=4)
  p.add_argument("--batches", type=int, default=30)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--workers", default="0,2")
  p.add_argument("--packing", default="first_fit", choices=("first_fit", "best_fit"))
  p.add_argument("--max_supervised_tokens", type=int, default=0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--realistic", default="", help="root of bench/realistic_corpus.py's corpus")
  a = p.parse_args()
  if a.realistic:
    realistic_config(a.realistic)  # build the corpus before timing
  else:
    pipeline.make_eval_examples(pipeline.default_data_config(), task="text", limit=1)  # the cache
  for w in (int(x) for x in a.workers.split(",")):
    r = run(w, a.seq_len, a.batch_size, a.batches, a.warmup, a.packing, a.max_supervised_tokens,
            a.seed, a.realistic)
    print(f"workers={r['workers']} seq_len={a.seq_len} batch={a.batch_size} packing={a.packing}: "
          f"{r['samples_per_s']:.0f} samples/s, {r['tokens_per_s']:.0f} packed tokens/s, "
          f"{r['batches_per_s']:.2f} batches/s, packing efficiency {100 * r['packing_efficiency']:.2f}% "
          f"({r['samples_per_batch']:.1f} samples/batch), skips {r['skips']}", flush=True)


if __name__ == "__main__":
  main()
