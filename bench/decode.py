"""Decoding: the KV-cache decoder against uncached greedy decoding (each token re-runs
the whole row), and the prefill on the XLA and the Pallas-kernel attention.

For each prompt length, one subprocess per mode builds the demo-shaped model (width 128,
4 layers, 4 q / 2 kv heads of 32, the 151936-token vocabulary; random float32 weights),
decodes ``--new_tokens`` greedy tokens for ``--batch`` prompts of that length (text)
once to compile, then again timed, and reports decode tokens/s (generated tokens / wall
time of the timed run, prefill included) and the process's peak RSS. ``prefill`` times
one cached prefill + first token on the ``xla`` and ``pallas`` attention (the kernel in
Pallas' interpreter on a CPU: a correctness path, not a speed one). Ratios are against
uncached decoding in the same run.

    JAX_PLATFORMS=cpu PYTHONPATH=. python bench/decode.py --prompt_lens 512,2048,8192
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model_cfg(attention_impl: str = "xla"):
  from neo_jax.model import config as config_lib  # pylint: disable=import-outside-toplevel
  return config_lib.get_model_config(
      "tiny", vocab_size=151936, img_context_token_id=151669, img_start_token_id=151670,
      img_end_token_id=151671, hidden_size=128, intermediate_size=384, num_llm_layers=3,
      num_prebuffer_layers=1, num_heads=4, num_kv_heads=2, head_dim=32, vision_hidden=64,
      dtype="float32", attention_impl=attention_impl, attention_block_q=512,
      attention_block_kv=512)


def run_one(mode: str, prompt_len: int, new_tokens: int, batch: int) -> dict:
  """One measurement in this process (``mode``: cached | uncached | prefill_xla |
  prefill_pallas)."""
  from flax import linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from neo_jax.infer import decode, generate  # pylint: disable=import-outside-toplevel
  from neo_jax.model.neo import NEO  # pylint: disable=import-outside-toplevel
  impl = "pallas" if mode == "prefill_pallas" else "xla"
  cfg = _model_cfg(impl)
  model = NEO(cfg)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), *[np.zeros(s, d) for s, d in (
          ((1, 8), np.int32), ((1, 8), np.int32), ((1, 8, 2), np.int32),
          ((1, 8, 4, 768), np.uint8))])["params"])
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda s: (rng.standard_normal(s.shape) * 0.02).astype(np.float32), shapes)
  params = nn.meta.unbox(params)
  prompts = [{"input_ids": rng.integers(0, 150000, prompt_len).astype(np.int32),
              "token_hw": np.zeros((prompt_len, 2), np.int32),
              "pixel_values": np.zeros((0, 4, 768), np.uint8)} for _ in range(batch)]
  n = 1 if mode.startswith("prefill") else new_tokens
  if mode == "uncached":
    step = generate.make_greedy_step(model)
    fn = lambda: generate.greedy_generate(model, params, prompts, max_new_tokens=n,
                                          step_fn=step)
  else:
    gen = decode.Generator(cfg, bucket=64)
    fn = lambda: gen.generate(params, prompts, max_new_tokens=n)
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  out = fn()
  dt = time.perf_counter() - t0
  assert all(len(o) == n for o in out)
  return {"mode": mode, "prompt_len": prompt_len, "batch": batch, "new_tokens": n,
          "seconds": dt, "first_call_s": first, "tokens_per_s": batch * n / dt,
          "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--prompt_lens", default="512,2048,8192")
  ap.add_argument("--new_tokens", type=int, default=16)
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--modes", default="uncached,cached,prefill_xla,prefill_pallas")
  ap.add_argument("--pallas_max_len", type=int, default=2048,
                  help="skip the interpreted kernel prefill above this length")
  ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a.one:
    mode, length = a.one.split(":")
    print(json.dumps(run_one(mode, int(length), a.new_tokens, a.batch)))
    return
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  rows = []
  for length in (int(x) for x in a.prompt_lens.split(",")):
    for mode in a.modes.split(","):
      if mode == "prefill_pallas" and length > a.pallas_max_len:
        continue
      r = subprocess.run([sys.executable, __file__, f"--one={mode}:{length}",
                          f"--new_tokens={a.new_tokens}", f"--batch={a.batch}"],
                         env=env, capture_output=True, text=True, check=True)
      rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
      print(json.dumps(rows[-1]), flush=True)
  print("\n| prompt | mode | tokens | s | tokens/s | vs uncached | peak RSS GiB |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    base = next((b for b in rows if b["prompt_len"] == r["prompt_len"]
                 and b["mode"] == "uncached"), None)
    ratio = (f"{r['tokens_per_s'] / base['tokens_per_s']:.1f}x"
             if base and not r["mode"].startswith("prefill") else "")
    print(f"| {r['prompt_len']} | {r['mode']} | {r['batch'] * r['new_tokens']} | "
          f"{r['seconds']:.2f} | {r['tokens_per_s']:.2f} | {ratio} | {r['peak_rss_gib']:.2f} |")


if __name__ == "__main__":
  main()
