"""A trained model carries its processing: ``neo_jax.infer`` / ``neo_jax.evaluate`` on a
work directory use the pixel budgets the run trained with (``processing.json``), and
users' mistakes are one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from neo_jax.configs import demo
from neo_jax.data import embedded
from neo_jax.data import processor as processor_lib
from neo_jax.data.tokenizer import get_tokenizer
from neo_jax.infer import checkpoints, decode
from neo_jax.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINED_PIXELS = 4096   # the run's digit budget: a 64 x 64 resize, 4 visual tokens
QUESTION = "Which digit is this?"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A two-step run of a demo-shaped model whose digit source trained at 4096 pixels."""
  c = demo.get_config("steps=2,eval_every=0,seq_len=128,batch_size=8")
  c.model.num_llm_layers = 1
  for name in list(c.data.sources):
    if name not in ("digit", "text"):
      del c.data.sources[name]
  c.data.sources.digit.options.min_pixels = TRAINED_PIXELS
  c.data.sources.digit.options.max_pixels = TRAINED_PIXELS
  c.checkpoint.every_steps = 2
  c.tensorboard = False
  workdir = str(tmp_path_factory.mktemp("run"))
  trainer.run(c, workdir)
  return workdir


def _cli(*args, rc=0):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  env.pop("NEO_JAX_DEBUG", None)
  r = subprocess.run([sys.executable, "-m", *args], env=env, cwd=ROOT, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == rc, r.stderr[-3000:]
  return r.stdout, r.stderr


def _digit_image():
  rec = embedded.load_records("digit", "heldout")[0]
  return os.path.join(rec["data_path"], rec["image"])


def test_run_records_its_processing(run_dir):
  doc = json.load(open(os.path.join(run_dir, "processing.json")))
  assert doc["sources"]["digit"]["options"]["max_pixels"] == TRAINED_PIXELS
  assert doc["sources"]["digit"]["modality"] == "image"
  assert doc["sources"]["text"]["modality"] == "text"


def test_infer_on_a_work_directory_uses_the_trained_processing(run_dir):
  image = _digit_image()
  out, err = _cli("neo_jax.infer", f"--ckpt={run_dir}", f"--image={image}",
                  f"--prompt={QUESTION}", "--max_new_tokens=4", "--show_ids")
  assert "processing: training source 'digit' (image)" in err
  assert f"max_pixels={TRAINED_PIXELS}" in err
  assert "(4 visual)" in err and "First token after" in err and "tokens/s" in err
  # The answer is the decoder's on the prompt processed at the trained budget.
  cfg, params, tok_kind, _ = checkpoints.load(run_dir)
  proc = processor_lib.SampleProcessor(processor_lib.ProcessOptions(
      min_pixels=TRAINED_PIXELS, max_pixels=TRAINED_PIXELS, tokenizer=tok_kind))
  prompt = proc.process({"image": [image], "conversations": [
      {"from": "human", "value": QUESTION}, {"from": "gpt", "value": ""}]}, prompt_only=True)
  tok = get_tokenizer(tok_kind)
  ids = decode.Generator(cfg).generate(params, [prompt], max_new_tokens=4,
                                       stop_ids=(tok.im_end_id,))[0]
  assert f"ids: {ids}" in err and out == tok.decode(ids) + "\n"
  # An explicit flag overrides the trained value (and says so).
  _, err = _cli("neo_jax.infer", f"--ckpt={run_dir}", f"--image={image}",
                f"--prompt={QUESTION}", "--max_new_tokens=1", "--min_pixels=1024",
                "--max_pixels=1024")
  assert "(1 visual)" in err and "overridden: max_pixels=1024, min_pixels=1024" in err


def test_evaluate_on_a_work_directory_uses_the_trained_processing(run_dir, tmp_path):
  data = tmp_path / "d.jsonl"
  rec = {"image": _digit_image(), "conversations": [
      {"from": "human", "value": QUESTION}, {"from": "gpt", "value": "3"}]}
  data.write_text(json.dumps(rec) + "\n")
  _, err = _cli("neo_jax.evaluate", f"--ckpt={run_dir}", f"--data={data}", "--metric=mcq",
                f"--out={tmp_path / 'o'}", "--max_new_tokens=2")
  assert f"training source 'digit' (image)" in err and f"max_pixels={TRAINED_PIXELS}" in err
  assert "have no 'options'" in err   # said once, for the mcq metric
  summary = json.load(open(tmp_path / "o" / "summary.json"))
  assert summary["records"] == 1


@pytest.mark.parametrize("case", ["missing_image", "tag_mismatch", "not_a_checkpoint",
                                  "unknown_source", "empty_data", "missing_data"])
def test_user_mistakes_are_one_line_errors(run_dir, tmp_path, case):
  image = _digit_image()
  args = {
      "missing_image": ("neo_jax.infer", f"--ckpt={run_dir}", "--image=/no/such.png",
                        "--prompt=q"),
      "tag_mismatch": ("neo_jax.infer", f"--ckpt={run_dir}", f"--image={image}",
                       "--prompt=<image> and <image>?"),
      "not_a_checkpoint": ("neo_jax.infer", f"--ckpt={tmp_path}", f"--image={image}",
                           "--prompt=q"),
      "unknown_source": ("neo_jax.infer", f"--ckpt={run_dir}", f"--image={image}",
                         "--prompt=q", "--source=nope"),
      "empty_data": ("neo_jax.evaluate", f"--ckpt={run_dir}", "--data=,", f"--out={tmp_path}"),
      "missing_data": ("neo_jax.evaluate", f"--ckpt={run_dir}", "--data=/no/such.jsonl",
                       f"--out={tmp_path}"),
  }[case]
  _, err = _cli(*args, rc=2)
  lines = [l for l in err.splitlines() if l.strip()]
  assert "Traceback" not in err and lines[-1].startswith("error: "), err
  want = {"missing_image": "/no/such.png", "tag_mismatch": "2 <image> tags for 1",
          "not_a_checkpoint": "is not a training work directory", "unknown_source": "'nope'",
          "empty_data": "names no records", "missing_data": "/no/such.jsonl"}[case]
  assert want in lines[-1], lines[-1]


def test_export_of_the_run_keeps_its_processing(run_dir, tmp_path):
  """``convert export --src <work dir>`` writes the run's processing.json into the Hugging
  Face directory (and its digit budget into vision_config); infer reads it from there."""
  hf = tmp_path / "hf"
  _cli("neo_jax.convert", "export", f"--src={run_dir}", f"--dst={hf}", "--dtype=float32",
       "--noprogress")
  assert json.load(open(hf / "processing.json")) == json.load(
      open(os.path.join(run_dir, "processing.json")))
  vision = json.load(open(hf / "config.json"))["vision_config"]
  assert vision["min_pixels"] == vision["max_pixels"] == TRAINED_PIXELS
  _, err = _cli("neo_jax.infer", f"--ckpt={hf}", f"--image={_digit_image()}",
                f"--prompt={QUESTION}", "--max_new_tokens=1")
  assert "training source 'digit' (image)" in err and "(4 visual)" in err
