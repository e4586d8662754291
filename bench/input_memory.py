"""Input-pipeline memory on a video-heavy mixture with a slow consumer (issue 22).

Builds (once, under ``--corpus``) a realistic mixture: 10-minute 1280x720 H.264 clips,
1-4 MP JPEG photos, 2-4-photo records and text, NEO-ov's 2 : 4 : 1 : 1 by modality
(``realistic_corpus.py``). Then, for each ``--workers`` value and each setting, a
fresh process imports JAX (its runtime counts), builds the real pipeline of
``--config`` (default the NEO-ov 2B stage-3 recipe) for one host with ``--batch_size``
rows, and consumes one batch every ``--consumer_s`` seconds for ``--duration_s``
seconds, sampling its resident set every second. Reported per run: the peak RSS of
the process (VmHWM) and of its workers, the RSS after the first batch and at the end,
the slope over the second half [MiB/min], batches, fitted / skipped samples.

Settings: ``bytes`` (the defaults: read-ahead ``data.prefetch_mib`` and the packer's
``data.max_waiting_mib``) and, with ``--legacy``, ``count`` (the count-bounded
pipeline before issue 22: Grain's read buffer of 64 samples, 4 per worker, the
packer's 16 waiting samples, no byte bounds).

    JAX_PLATFORMS=cpu PYTHONPATH=. python bench/input_memory.py --corpus /tmp/neo_longvideo \\
        --workers 0,2 --duration_s 600 --consumer_s 5 [--legacy]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(a) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, ROOT)
  from neo_jax import configs  # pylint: disable=import-outside-toplevel
  from neo_jax.core import host_memory  # pylint: disable=import-outside-toplevel
  from neo_jax.data import mixture, pipeline  # pylint: disable=import-outside-toplevel
  jnp.zeros((1024, 1024)).block_until_ready()   # JAX's runtime is part of the process
  config = configs.get_config(f"{a.config},data={a.mix}")
  d = mixture.apply_mixture(config.data)
  d.num_workers = a.worker_count
  if a.setting == "count":
    d.read_buffer_size, d.worker_buffer_size, d.max_waiting = 64, 4, 16
    d.prefetch_mib, d.max_waiting_mib = 1 << 20, 0
  m = config.model
  it = pipeline.make_train_iterator(
      d, seq_len=config.seq_len, batch_size=a.batch_size,
      max_supervised_tokens=m.max_supervised_tokens, seed=0,
      max_sample_tokens=m.get("max_sample_tokens", 0),
      max_visual_tokens=m.get("max_visual_tokens", 0))
  samples, stop = [], threading.Event()

  def sample():
    t0 = time.perf_counter()
    while not stop.is_set():
      samples.append((time.perf_counter() - t0, host_memory.rss_bytes() / 2**20))
      time.sleep(1.0)

  t0 = time.perf_counter()
  threading.Thread(target=sample, daemon=True).start()
  batches, first = 0, None
  while time.perf_counter() - t0 < a.duration_s:
    next(it)
    batches += 1
    if first is None:
      first = (time.perf_counter() - t0, host_memory.rss_bytes() / 2**20)
    time.sleep(a.consumer_s)
  stop.set()
  own, kids = host_memory.peak_rss_bytes()
  by_minute = {}
  for t, r in samples:
    by_minute[int(t // 60)] = max(by_minute.get(int(t // 60), 0.0), r)
  half = [r for t, r in samples if t >= a.duration_s / 2]
  slope = (half[-1] - half[0]) / (a.duration_s / 2) * 60 if len(half) > 1 else 0.0
  st = it.stats()
  return {"setting": a.setting, "workers": a.worker_count, "peak_mib": own / 2**20,
          "workers_peak_mib": kids / 2**20, "first_batch_s": first[0],
          "rss_first_batch_mib": first[1], "rss_end_mib": samples[-1][1],
          "slope_mib_per_min": slope, "batches": batches,
          "max_rss_by_minute_mib": [round(by_minute[k]) for k in sorted(by_minute)],
          "fitted": pipeline.fit_counts(it), "skipped": pipeline.skip_counts(it),
          "samples": st.get("samples", 0), "seq_len": config.seq_len,
          "prefetch_mib": d.prefetch_mib, "max_waiting_mib": d.max_waiting_mib}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--corpus", default="/tmp/neo_longvideo")
  ap.add_argument("--minutes", type=float, default=10.0, help="length of each clip")
  ap.add_argument("--videos", type=int, default=3)
  ap.add_argument("--config", default="neo_ov_2b:stage3")
  ap.add_argument("--workers", default="0,2")
  ap.add_argument("--batch_size", type=int, default=1)
  ap.add_argument("--duration_s", type=float, default=600)
  ap.add_argument("--consumer_s", type=float, default=5.0)
  ap.add_argument("--settings", default="bytes", help="bytes and / or count (comma-separated)")
  ap.add_argument("--child", action="store_true")
  ap.add_argument("--setting", default="bytes")
  ap.add_argument("--worker_count", type=int, default=0)
  ap.add_argument("--mix", default="")
  a = ap.parse_args()
  if a.child:
    print(json.dumps(_child(a)))
    return
  import realistic_corpus  # pylint: disable=import-outside-toplevel
  mix = realistic_corpus.build(a.corpus, photos=24, videos=a.videos, records=200,
                               long_video_minutes=a.minutes)
  rows = []
  for setting in a.settings.split(","):
    for w in [int(x) for x in a.workers.split(",")]:
      r = benchlib.run_fresh(__file__, [
          "--child", f"--setting={setting}", f"--worker_count={w}", f"--mix={mix}",
          f"--config={a.config}", f"--batch_size={a.batch_size}",
          f"--duration_s={a.duration_s}", f"--consumer_s={a.consumer_s}"])
      rows.append(r)
      print(json.dumps(r), flush=True)
  print(f"\n{'setting':<8} {'workers':>7} {'peak MiB':>9} {'workers MiB':>11} "
        f"{'1st batch MiB':>13} {'end MiB':>8} {'MiB/min':>8} {'batches':>7}")
  for r in rows:
    print(f"{r['setting']:<8} {r['workers']:>7} {r['peak_mib']:>9.0f} "
          f"{r['workers_peak_mib']:>11.0f} {r['rss_first_batch_mib']:>13.0f} "
          f"{r['rss_end_mib']:>8.0f} {r['slope_mib_per_min']:>8.1f} {r['batches']:>7}")


if __name__ == "__main__":
  main()
