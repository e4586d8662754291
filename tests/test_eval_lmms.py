"""lmms-eval 0.7.3 runs our checkpoints, end to end, offline (slow: each lmms-eval run
takes about a minute on two shared cores, the first one also builds its environment).

lmms-eval gets an environment of its own (``neo_jax/eval/lmms_env.py``: its pins conflict
with the lock file), built once under ``$NEO_JAX_TOOLS_DIR`` (default
``~/.cache/neo_jax/tools``, ~3 GB, ~10 minutes). neo_jax is on ``PYTHONPATH`` and its
model is found through the ``lmms_eval.models`` entry point declared in
``pyproject.toml`` (a ``.dist-info`` holding that declaration is put on the path: what
``pip install -e .`` would write). lmms-eval runs the local tasks of ``tests/lmms_task``
(held-out digit images and digit videos of the embedded data set, JSONL read by
``datasets``) with the network guarded (``NEO_JAX_LOOPBACK_ONLY``, Hugging Face offline).

* chat model, ``generate_until`` on images and videos: lmms-eval's logged answers equal
  our decoder's on records built by hand from the same documents;
* simple model (``--force_simple``), a ``multiple_choice`` task: lmms-eval's logged
  per-choice values equal the negative log-likelihood of the choice computed in NumPy
  float64 from the model's full-sequence logits, and its accuracy follows from them.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys
import tomllib

import numpy as np
import pytest
from PIL import Image

from neo_jax.data import processor as processor_lib
from neo_jax.data.tokenizer import get_tokenizer
from neo_jax.eval import lmms_env
from neo_jax.infer import decode
from neo_jax.model.neo import NEO
from test_infer_cli import small  # noqa: F401  pylint: disable=unused-import

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = os.path.join(ROOT, "tests", "lmms_task")
DATA = os.path.join(TASKS, "neo_local", "data")
_RUN = ("import sys; from neo_jax import platform; platform.guard_network(); "
        "from lmms_eval.cli.dispatch import main; sys.argv = ['lmms-eval'] + sys.argv[1:]; main()")


@pytest.fixture(scope="module")
def lmms_python():
  """The Python of the lmms-eval environment (built once, cached by its requirements)."""
  reqs = lmms_env.requirements()
  tag = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:10]
  base = os.environ.get("NEO_JAX_TOOLS_DIR") or os.path.join(
      os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "neo_jax", "tools")
  venv = os.path.join(base, f"lmms-eval-{tag}-py{sys.version_info[0]}{sys.version_info[1]}")
  if not os.path.exists(os.path.join(venv, ".complete")):
    tmp = f"{venv}.tmp{os.getpid()}"
    try:
      lmms_env.build(tmp, install_neo_jax=False, log=lambda s: print(s, file=sys.stderr))
    except subprocess.CalledProcessError as e:
      pytest.fail(f"building the lmms-eval environment failed (needs the package index): {e}")
    open(os.path.join(tmp, ".complete"), "w").close()
    try:
      os.rename(tmp, venv)
    except OSError:  # built meanwhile by another test process
      subprocess.run(["rm", "-rf", tmp], check=False)
  return os.path.join(venv, "bin", "python")


@pytest.fixture(scope="module")
def entry_point(tmp_path_factory):
  """A path entry whose ``.dist-info`` declares pyproject.toml's lmms-eval entry points."""
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    eps = tomllib.load(f)["project"]["entry-points"]["lmms_eval.models"]
  d = tmp_path_factory.mktemp("ep")
  info = d / "neo_jax_entry_points-0.dist-info"
  info.mkdir()
  (info / "METADATA").write_text("Metadata-Version: 2.1\nName: neo_jax_entry_points\nVersion: 0\n")
  (info / "entry_points.txt").write_text(
      "[lmms_eval.models]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
  return str(d)


def _lmms(python, ep, out, *args):
  home = out / "hf"
  env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ep}", JAX_PLATFORMS="cpu",
             NEO_JAX_LOOPBACK_ONLY="1", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
             HF_HOME=str(home), HF_DATASETS_CACHE=str(home / "datasets"))
  r = subprocess.run([python, "-c", _RUN, "--include_path", ".", "--output_path", str(out),
                      "--log_samples", *args], cwd=TASKS, env=env, capture_output=True,
                     text=True, timeout=1800)
  assert r.returncode == 0 and "Error during evaluation" not in r.stdout + r.stderr, (
      r.stdout[-3000:] + r.stderr[-3000:])
  samples = {}
  for path in glob.glob(str(out / "*" / "*_samples_*.jsonl")):
    task = path.rsplit("_samples_", 1)[1][:-len(".jsonl")]
    samples[task] = {s["doc_id"]: s for s in map(json.loads, open(path))}
  (res,) = glob.glob(str(out / "*" / "*_results.json"))
  return samples, json.load(open(res))["results"]


def _docs(name):
  return [json.loads(l) for l in open(os.path.join(DATA, f"{name}.jsonl"))]


def _record(doc):
  """The record of a document, by hand: its image (as the task gives it) or video, then
  the question."""
  turns = lambda tag: [{"from": "human", "value": f"{tag}\n{doc['question']}"},
                       {"from": "gpt", "value": ""}]
  if "video" in doc:
    return {"video": os.path.join(DATA, doc["video"]), "conversations": turns("<video>")}
  img = Image.open(os.path.join(DATA, doc["image"])).convert("RGB")
  return {"image": [img], "conversations": turns("<image>")}


def test_generate_until_on_images_and_videos(small, lmms_python, entry_point, tmp_path):  # noqa: F811
  c, _, params, ckpt = small
  samples, results = _lmms(lmms_python, entry_point, tmp_path, "--model", "neo_jax",
                           "--model_args", f"pretrained={ckpt}", "--tasks",
                           "neo_local_digit,neo_local_video", "--batch_size", "1")
  tok = get_tokenizer("embedded")
  proc = processor_lib.SampleProcessor(processor_lib.ProcessOptions())
  gen = decode.Generator(c.model)
  for task in ("digit", "video"):
    docs = _docs(task)
    got = samples[f"neo_local_{task}"]
    assert sorted(got) == list(range(len(docs)))
    hits = []
    for i, doc in enumerate(docs):
      ids = gen.generate(params, [proc.process(_record(doc), prompt_only=True)],
                         max_new_tokens=4, stop_ids=(tok.im_end_id,))[0]
      want = tok.decode(ids).strip()
      assert got[i]["filtered_resps"] in (want, [want]), (task, i)
      hits.append(float(want == doc["answer"]))
    assert results[f"neo_local_{task}"]["exact_match,none"] == pytest.approx(np.mean(hits))


def test_loglikelihood_multiple_choice(small, lmms_python, entry_point, tmp_path):  # noqa: F811
  c, _, params, ckpt = small
  samples, results = _lmms(lmms_python, entry_point, tmp_path, "--model", "neo_jax",
                           "--force_simple", "--model_args", f"pretrained={ckpt}",
                           "--tasks", "neo_local_choice", "--batch_size", "16")
  tok = get_tokenizer("embedded")
  proc = processor_lib.SampleProcessor(processor_lib.ProcessOptions())
  model = NEO(c.model)
  docs = _docs("digit")
  hits = []
  for i, doc in enumerate(docs):
    prompt = proc.process(_record(doc), prompt_only=True)
    n = len(prompt["input_ids"])
    choices = [tok.encode(str(k)) for k in range(10)]
    assert all(len(ids) == 1 for ids in choices)      # one row per choice, one length
    full = np.stack([np.concatenate([prompt["input_ids"], ids]) for ids in choices])
    hw = np.broadcast_to(np.concatenate([prompt["token_hw"], np.zeros((1, 2), np.int32)]),
                         full.shape + (2,))
    pv = np.zeros(full.shape + (4, 768), np.uint8)
    pv[:, np.flatnonzero(full[0] == c.model.img_context_token_id)] = prompt["pixel_values"]
    logits = np.asarray(model.apply({"params": params}, full, np.ones_like(full), hw, pv),
                        np.float64)[:, n - 1]                       # [choice, V]
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    want = [-logp[k, ids[0]] for k, ids in enumerate(choices)]
    got = [float(v[0]) for v in samples["neo_local_choice"][i]["filtered_resps"]]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    hits.append(float(int(np.argmin(want)) == int(doc["answer"])))
  assert results["neo_local_choice"]["acc,none"] == pytest.approx(np.mean(hits))
