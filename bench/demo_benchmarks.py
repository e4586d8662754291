"""VLMEvalKit TSVs of the embedded held-out data, to score the demo checkpoint the way
the authors score NEO (BUILD_NOTES.md §0k):

  python bench/demo_benchmarks.py --out /tmp/lmudata
  python -m neo_jax.evaluate --ckpt /tmp/neo_demo --out /tmp/ev_tsv --source digit \\
      --data /tmp/lmudata/EmbeddedDigit.tsv --dataset_type VQA
  python -m neo_jax.evaluate --ckpt /tmp/neo_demo --out /tmp/ev_tsv_spatial --source spatial \\
      --data /tmp/lmudata/EmbeddedSpatial.tsv

* ``EmbeddedDigit.tsv``: the held-out digits (one 32 x 32 image each), question without
  the image tag, ``answer`` the digit: scored as VQA (VLMEvalKit's default VQA score).
* ``EmbeddedSpatial.tsv``: the held-out spatial images (a digit on a 96 x 96 canvas) as
  multiple choice over the nine places (options A..I, ``answer`` the letter): the
  release's multiple-choice prompt; VLMEvalKit's matching takes the letter or the
  option's text.
"""

from __future__ import annotations

import argparse
import base64
import csv
import os

from neo_jax.data import embedded


def _b64(path: str) -> str:
  with open(path, "rb") as f:
    return base64.b64encode(f.read()).decode()


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True, help="folder for the TSVs")
  a = p.parse_args()
  os.makedirs(a.out, exist_ok=True)
  letters = "ABCDEFGHI"
  with open(os.path.join(a.out, "EmbeddedDigit.tsv"), "w", newline="") as f:
    w = csv.writer(f, delimiter="\t")
    w.writerow(["index", "question", "answer", "category", "image"])
    for i, r in enumerate(embedded.load_records("digit", "heldout")):
      q = r["conversations"][0]["value"].replace("<image>\n", "")
      w.writerow([i, q, r["conversations"][1]["value"], "digit",
                  _b64(os.path.join(r["data_path"], r["image"]))])
  with open(os.path.join(a.out, "EmbeddedSpatial.tsv"), "w", newline="") as f:
    w = csv.writer(f, delimiter="\t")
    w.writerow(["index", "question", *letters, "answer", "category", "image"])
    for i, r in enumerate(embedded.load_records("spatial", "heldout")):
      place = r["conversations"][1]["value"]
      w.writerow([i, "Where is the digit in the image?", *embedded.SPATIAL_NAMES,
                  letters[embedded.SPATIAL_NAMES.index(place)], place,
                  _b64(os.path.join(r["data_path"], r["image"]))])
  print(f"wrote {a.out}/EmbeddedDigit.tsv and {a.out}/EmbeddedSpatial.tsv")


if __name__ == "__main__":
  main()
