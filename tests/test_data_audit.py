"""``python -m neo_jax.data.audit``: the real pipeline without a model, a per-source
report, and a non-zero exit status when a source starves."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _conv(q, a="fine"):
  return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def _mixture(tmp_path, starving: bool):
  img = tmp_path / "photo.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 500, 3), np.uint8)).save(img)
  text = [{"conversations": _conv(f"What is {i} + {i}?", str(2 * i))} for i in range(40)]
  photos = [{"image": "photo.png", "conversations": _conv("Describe it.")} for _ in range(40)]
  srcs = {"text": ("text.jsonl", text), "photos": ("photos.jsonl", photos)}
  if starving:
    srcs["essays"] = ("essays.jsonl", [{"conversations": _conv("word " * 900)}] * 5)
  mix = {"sources": {}}
  for name, (fname, recs) in srcs.items():
    (tmp_path / fname).write_text("".join(json.dumps(r) + "\n" for r in recs))
    mix["sources"][name] = {"annotation_path": str(tmp_path / fname), "data_path": str(tmp_path),
                            "weight": 2 if name == "text" else 1}
  path = tmp_path / "mix.json"
  path.write_text(json.dumps(mix))
  return path


def _audit(tmp_path, mix, *extra):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, "-m", "neo_jax.data.audit", "--config=demo",
       f"--data={mix}", "--batches=4", "--batch_size=2", f"--json={tmp_path / 'a.json'}",
       "--config.seq_len=512", *extra], env=env, cwd=ROOT, capture_output=True, text=True,
      timeout=600)


def test_audit_reports_every_source(tmp_path):
  r = _audit(tmp_path, _mixture(tmp_path, starving=False))
  assert r.returncode == 0, r.stderr[-3000:]
  out = r.stdout
  assert "source" in out and "packing efficiency" in out and "samples/s" in out
  doc = json.load(open(tmp_path / "a.json"))
  s = doc["sources"]
  assert set(s) == {"text", "photos"} and doc["batches"] == 4
  assert s["photos"]["visual_share"] > 0.5 and s["text"]["visual_share"] == 0
  assert abs(doc["weights"]["text"] - 2 / 3) < 1e-9
  # 500x300 photo at the demo's default budget: smart_resize -> 512x288 = 144 visual tokens.
  assert s["photos"]["tokens_max"] >= 144 + 2 and doc["peak_rss_bytes"] > 0
  assert s["text"]["kept"] + s["photos"]["kept"] >= doc["samples"]


def test_audit_fails_on_a_starving_source(tmp_path):
  r = _audit(tmp_path, _mixture(tmp_path, starving=True), "--config.data.starve_records=20")
  assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
  assert "STARVING" in r.stdout and "'essays'" in r.stdout and "too_long" in r.stdout
