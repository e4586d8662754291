"""Data mixtures from the command line: a mixture file of release-registry sources trains
the smoke model; the released-size recipes refuse to start without one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from configs import smoke
from neo_jax.data import mixture
from neo_jax.data.tokenizer import get_tokenizer
from neo_jax.train import input_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_IDS = ["--config.model.vocab_size=151936", "--config.model.img_context_token_id=151669",
            "--config.model.img_start_token_id=151670", "--config.model.img_end_token_id=151671"]


def _env():
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
              XLA_FLAGS="--xla_force_host_platform_device_count=1")


def _jsonl(path, word, n):
  with open(path, "w") as f:
    for i in range(n):
      f.write(json.dumps({"conversations": [{"from": "human", "value": f"Say {word} {i}."},
                                            {"from": "gpt", "value": f"{word} {i}"}]}) + "\n")


def _mix(tmp_path):
  _jsonl(tmp_path / "a.jsonl", "alpha", 10)
  _jsonl(tmp_path / "b.jsonl", "bravo", 10)
  mix = tmp_path / "mix.yaml"
  mix.write_text(f"""sources:
  first:
    annotation_path: {tmp_path / 'a.jsonl'}
    data_path: {tmp_path}
    weight: 1
  second:
    annotation_path: {tmp_path / 'b.jsonl'}
    sampling_rate: 0.5
    weight: 2
    options: {{max_pixels: 16384}}
""")
  return mix


def test_recipe_without_a_mixture_refuses_to_start(tmp_path):
  r = subprocess.run([sys.executable, "-m", "neo_jax.train",
                      f"--config={ROOT}/configs/neo_ov_2b.py:stage2",
                      f"--workdir={tmp_path / 'x'}"], env=_env(), cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode != 0
  assert "no data mixture was given" in r.stderr and "data=mix.yaml" in r.stderr


def test_mixture_file_on_the_command_line_trains_and_mixes_both_sources(tmp_path):
  mix = _mix(tmp_path)
  r = subprocess.run([sys.executable, "-m", "neo_jax.train",
                      f"--config={ROOT}/configs/smoke.py:steps=2,seq_len=256,batch_size=2",
                      f"--workdir={tmp_path / 'run'}", "--config.data.kind=pipeline",
                      f"--config.data.mixture={mix}", *REAL_IDS], env=_env(), cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "[train] step 2 " in r.stdout
  # The same config in-process: the packed batches hold samples of both sources, and the
  # sampled source contributes only its kept half.
  c = smoke.get_config("seq_len=256,batch_size=2")
  c.data.kind, c.data.mixture = "pipeline", str(mix)
  c.model.vocab_size = 151936
  it = input_pipeline.make_data_iterator(c)
  tok = get_tokenizer("embedded")
  text = " ".join(tok.decode([int(t) for t in b["input_ids"][b["segment_ids"] > 0]])
                  for b in (next(it) for _ in range(6)))
  assert "alpha" in text and "bravo" in text
  bravo = {int(w) for w in text.split("bravo ")[1:] for w in [w.split(".")[0].split()[0]]
           if w.isdigit()}
  assert 0 < len(bravo) <= 5, bravo


def test_malformed_mixtures_say_what_to_fix(tmp_path):
  bad = tmp_path / "bad.yaml"
  bad.write_text("sources:\n  x:\n    annotation_path: a.jsonl\n    colour: red\n")
  with pytest.raises(ValueError, match="unknown fields.*colour"):
    mixture.read_mixture(str(bad))
  bad.write_text("sources:\n  x:\n    annotation_path: a.jsonl\n    sampling_rate: 1.5\n")
  with pytest.raises(ValueError, match="sampling_rate"):
    mixture.read_mixture(str(bad))
  bad.write_text("- a\n- b\n")
  with pytest.raises(ValueError, match="'sources:'"):
    mixture.read_mixture(str(bad))
  with pytest.raises(FileNotFoundError):
    mixture.read_mixture(str(tmp_path / "missing.yaml"))
  got = mixture.read_mixture(str(_mix(tmp_path)))
  assert got["second"]["path"].endswith("b.jsonl") and got["first"]["data_root"] == str(tmp_path)
  assert got["second"]["sampling_rate"] == 0.5 and got["first"]["kind"] == "json"
