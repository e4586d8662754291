"""The inference and evaluation command lines, driven as a user would, on a small model
with the real vocabulary (the demo's shape, random weights): ``neo_jax.evaluate``
reproduces the trainer's evaluator record for record; ``neo_jax.infer`` answers a
question about an image exactly as the decoder does in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import pytest

from neo_jax.configs import demo
from neo_jax.convert import orbax_io
from neo_jax.data import embedded
from neo_jax.data import processor as processor_lib
from neo_jax.data.tokenizer import get_tokenizer
from neo_jax.infer import decode
from neo_jax.train import evaluate, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = 6


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  c = demo.get_config()
  c.model.num_llm_layers = 1
  for name in list(c.data.sources):
    if name not in ("digit", "spatial"):
      del c.data.sources[name]
  c.eval.limit_per_task = LIMIT
  setup = trainer.Setup(c)
  params = jax.device_get(setup.init_state(3).params)
  ckpt = str(tmp_path_factory.mktemp("ckpt") / "params")
  orbax_io.save_params(ckpt, params, c.model)
  return c, setup, params, ckpt


def _cli(*args, stderr=False):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", *args], env=env, cwd=ROOT, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return (r.stdout, r.stderr) if stderr else r.stdout


def test_evaluate_cli_reproduces_the_trainers_evaluator(small, tmp_path):
  c, setup, params, ckpt = small
  ev = evaluate.Evaluator(c, setup)
  want = ev.predictions(params)
  acc = ev.run(params)
  out = tmp_path / "eval"
  _cli("neo_jax.evaluate", f"--ckpt={ckpt}", "--data=embedded:digit,embedded:spatial",
       f"--limit={LIMIT}", f"--out={out}", f"--max_new_tokens={c.eval.max_new_tokens}",
       f"--batch_size={c.eval.batch_size}")
  got = [json.loads(line) for line in open(out / "predictions.jsonl")]
  assert [g["prediction"] for g in got] == [p for _, p in want]
  assert [g["answer"] for g in got] == [ex["answer"] for ex, _ in want]
  summary = json.load(open(out / "summary.json"))
  assert summary["records"] == 2 * LIMIT
  for task in ("digit", "spatial"):
    assert summary["per_task"][task]["accuracy"] == pytest.approx(acc[f"acc/{task}"])


def test_evaluate_cli_counts_bad_records_and_scores_multiple_choice(small, tmp_path):
  _, _, _, ckpt = small
  data = tmp_path / "mcq.jsonl"
  good = {"conversations": [{"from": "human", "value": "Pick one. A. red B. blue"},
                            {"from": "gpt", "value": "B"}], "task": "colour"}
  lines = [json.dumps(good), "{not json", json.dumps([1, 2]),
           json.dumps({"image": "missing.png", "conversations": good["conversations"]})]
  data.write_text("\n".join(lines) + "\n")
  out = tmp_path / "out"
  _cli("neo_jax.evaluate", f"--ckpt={ckpt}", f"--data={data}", "--metric=mcq", f"--out={out}",
       "--max_new_tokens=3")
  summary = json.load(open(out / "summary.json"))
  assert summary["records"] == 1
  assert sum(summary["skipped"].values()) == 3, summary["skipped"]


def test_infer_cli_answers_about_an_image_as_the_decoder_does(small):
  c, _, params, ckpt = small
  rec = embedded.load_records("digit", "heldout")[0]
  image = os.path.join(rec["data_path"], rec["image"])
  question = "Which digit is this?"
  printed, log = _cli("neo_jax.infer", f"--ckpt={ckpt}", f"--image={image}",
                      f"--prompt={question}", "--max_new_tokens=5", "--max_pixels=1024",
                      "--show_ids", stderr=True)
  proc = processor_lib.SampleProcessor(processor_lib.ProcessOptions(max_pixels=1024))
  prompt = proc.process({"image": [image], "conversations": [
      {"from": "human", "value": question}, {"from": "gpt", "value": ""}]}, prompt_only=True)
  tok = get_tokenizer("embedded")
  ids = decode.Generator(c.model).generate(params, [prompt], max_new_tokens=5,
                                           stop_ids=(tok.im_end_id,))[0]
  assert f"ids: {ids}" in log
  assert printed == tok.decode(ids) + "\n"


def test_evaluate_cli_on_two_processes_equals_one(small, tmp_path):
  """``launch/local.py`` runs the CLI as 2 jax.distributed processes: each decodes its
  share of the records, process 0 merges; the result equals the one-process run."""
  _, _, _, ckpt = small
  args = ["-m", "neo_jax.evaluate", f"--ckpt={ckpt}", "--data=embedded:digit",
          f"--limit={LIMIT}", "--max_new_tokens=4", "--batch_size=4"]
  one, two = tmp_path / "one", tmp_path / "two"
  _cli(*args[1:], f"--out={one}")
  env = dict(os.environ, PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, f"{ROOT}/launch/local.py", "--num_processes=2",
                      "--devices_per_process=1", "--", sys.executable, *args, f"--out={two}"],
                     env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  key = lambda p: p["id"]
  a = sorted((json.loads(l) for l in open(one / "predictions.jsonl")), key=key)
  b = sorted((json.loads(l) for l in open(two / "predictions.jsonl")), key=key)
  assert a == b and len(a) == LIMIT
  assert sorted(os.listdir(two)) == ["predictions.jsonl", "summary.json"]
