"""Peak memory of one host opening a large annotation file: JSONL and Parquet sources.

Writes N release-format records (text + an image path, ~170 bytes of JSON each) as a
JSONL file and as a Parquet file (row groups of 10000), then, each in a fresh
subprocess, opens a source and reads 1000 records spread over the file, reporting the peak
resident memory that opening and reading adds (Linux VmHWM, reset after the imports):

* ``jsonl_keep_lines``: the previous ``JsonLinesSource`` (read the file, keep every
  line's bytes), re-stated here as the "before" figure;
* ``jsonl_offsets``: today's ``JsonLinesSource`` (one streaming pass, byte ranges only);
* ``parquet``: ``ParquetSource`` (metadata, one row group at a time).

    JAX_PLATFORMS=cpu PYTHONPATH=. python bench/annotation_memory.py --records 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # pylint: disable=wrong-import-position


def _write(d: str, n: int) -> tuple[str, str]:
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  jsonl, parquet = os.path.join(d, "r.jsonl"), os.path.join(d, "r.parquet")
  with open(jsonl, "w") as f:
    for i in range(n):
      f.write(json.dumps({"id": i, "image": f"images/{i:08d}.jpg", "conversations": [
          {"from": "human", "value": f"<image>\nWhat is in picture {i}?"},
          {"from": "gpt", "value": f"A picture numbered {i}."}]}) + "\n")
  ids = list(range(n))
  table = pa.table({"id": ids, "image": [f"images/{i:08d}.jpg" for i in ids],
                    "conversations": [json.dumps([
                        {"from": "human", "value": f"<image>\nWhat is in picture {i}?"},
                        {"from": "gpt", "value": f"A picture numbered {i}."}]) for i in ids]})
  pq.write_table(table, parquet, row_group_size=10000)
  return jsonl, parquet


def _measure(mode: str, path: str) -> dict:
  from neo_jax.data import sources  # pylint: disable=import-outside-toplevel
  from neo_jax.data.parquet_source import ParquetSource  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  # Reset the peak after the imports, so the figure is what opening and reading adds.
  before = benchlib.reset_peak()
  t0 = time.perf_counter()
  if mode == "baseline":
    n = 0
  elif mode == "jsonl_keep_lines":
    with open(path, "rb") as f:
      items = [line for line in f.read().splitlines() if line.strip()]
    n = len(items)
    _ = [json.loads(items[i]) for i in range(0, n, max(n // 1000, 1))]
  else:
    src = sources.JsonLinesSource(path) if mode == "jsonl_offsets" else ParquetSource(path)
    n = len(src)
    _ = [src[i] for i in range(0, n, max(n // 1000, 1))]
  return {"mode": mode, "records": n, "seconds": time.perf_counter() - t0,
          "peak_rss_mib": benchlib.hwm_mib(), "added_peak_mib": benchlib.hwm_mib() - before}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--records", type=int, default=1_000_000)
  ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a.one:
    mode, path = a.one.split(":", 1)
    print(json.dumps(_measure(mode, path)))
    return
  with tempfile.TemporaryDirectory() as d:
    jsonl, parquet = _write(d, a.records)
    sizes = {"jsonl": os.path.getsize(jsonl), "parquet": os.path.getsize(parquet)}
    rows = []
    for mode, path in (("baseline", jsonl), ("jsonl_keep_lines", jsonl),
                       ("jsonl_offsets", jsonl), ("parquet", parquet)):
      rows.append(benchlib.run_fresh(__file__, [f"--one={mode}:{path}"]))
  print(f"files: JSONL {sizes['jsonl'] / 2**20:.0f} MiB, Parquet {sizes['parquet'] / 2**20:.0f} MiB")
  print("| source | records | open + 1000 reads s | peak RSS MiB | peak added by the source MiB |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['mode']} | {r['records']} | {r['seconds']:.2f} | {r['peak_rss_mib']:.0f} | "
          f"{r['added_peak_mib']:.0f} |")


if __name__ == "__main__":
  main()
