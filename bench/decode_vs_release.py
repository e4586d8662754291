"""Greedy decoding against the authors' release ``generate``: tokens/s, time to first token.

Issue 28, goal 2. Config A's model size (``bench/train_step.py``: hidden 256, MLP 768,
8 layers of which 4 pre-Buffer, 4 query / 2 kv heads of 64, vision width 256, untied
head, vocabulary 151,936; float32), random weights (``neo_jax.convert``'s
``random_leaves``, N(0, ``--init_std``)). The same weights on both sides: exported with
``neo_jax.convert.export_release`` and loaded by the release's ``to_hf``
``NEOChatModel`` (``AutoModel.from_pretrained(..., trust_remote_code=True)``, float32,
as VLMEvalKit loads NEO). The same one-image prompts (``--batch`` of them, each a
256x256 image between two random texts of different lengths; ``tests/testlib/batch.py``
builds both formats from the same pixels), greedy, ``--new_tokens`` tokens, no stop id,
the image-token ids banned on both sides (ours always; the release by
``suppress_tokens``, as ``tests/testlib/release.py``'s ``check_generate``).

* Ours: ``infer.decode.Generator`` on all prompts at once (one prefill program, then
  the split of the layer weights and cache per layer that its CPU default does, then
  one ``while_loop`` program). Time to first token = the prefill call (prefill + first
  token of every row, compile excluded: ``Generator.timing["prefill_s"]``); tokens/s =
  generated tokens / (prefill + loop) wall time, of a second call after a compiling one.
* The release: its ``generate`` asserts one prompt per call, so the prompts run one
  after the other (as VLMEvalKit runs NEO); time to first token = the sum over the
  prompts of a ``max_new_tokens=1`` call (each prompt's prefill + first token),
  tokens/s = generated tokens / the sum of the full calls' wall times, after a warm-up
  call. ``--release_attn sdpa`` swaps in transformers' SDPA for the eager attention
  the ``to_hf`` code hard-codes.

Each side is a fresh process per batch size (peak RSS = its VmHWM) and times
``--rounds`` calls of each measurement, reporting their medians (the machine's speed
drifts by 10-20% within minutes). The run fails unless every prompt's tokens are equal
on both sides, token for token. Timings are only meaningful on a quiet machine.

The time-to-first-token floor (``ttft_floor_s``): what any implementation needs on this
machine for the prefill's arithmetic and the head's bytes, ``max(body FLOPs / peak,
body weight bytes / bandwidth) + max(head FLOPs / peak, head bytes / bandwidth)``, with
the peak a 2048^3 float32 matmul and the bandwidth a sum over the head's kernel, both
measured in our process; body FLOPs are the forward model FLOPs of the real prompt
tokens (``train.flops.StepFlops``' weight groups, causal attention pairs: a lower
bound). The release's time to first token over that floor is the largest ratio any
prefill could reach here. Likewise the decoding ceiling (``tokens_per_s_ceiling``): a
step reads every decoder weight and the head once, ``B / max(step FLOPs / peak, those
bytes / bandwidth)`` tokens/s, over the release's tokens/s the largest tokens/s ratio.

    NEO_RELEASE_DIR=$EXTRACT/VLMEvalKit/vlmeval/vlm/neo/to_hf JAX_PLATFORMS=cpu \\
        PYTHONPATH=. python bench/decode_vs_release.py --batches 1,8 --new_tokens 128
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
import benchlib  # pylint: disable=wrong-import-position
import train_step  # pylint: disable=wrong-import-position


def model_config(a):
  """Config A's model (``bench/train_step.py``), float32, the default attention."""
  ns = argparse.Namespace(hidden=a.hidden, layers=a.layers, block=512, max_supervised=0,
                          max_visual=0, seq=2048)
  cfg = train_step.make_config(train_step.VOCABS["A"], "auto", ns).model
  cfg.init_std = a.init_std
  return cfg


def params_of(cfg, seed: int) -> dict:
  """Random parameters (deterministic in ``seed``): N(0, init_std) kernels, unit norms."""
  from neo_jax.convert import convert as cv  # pylint: disable=import-outside-toplevel
  return cv.collect(cv.random_leaves(cfg, seed=seed))


def prompts(cfg, n: int, seed: int) -> list[tuple[dict, dict]]:
  """``n`` one-image prompts as ``(ours, release)``: ours a ``Generator`` prompt dict,
  the release's ``input_ids [1, L]`` / ``pixel_values`` / ``grid_hw`` tensors' arrays."""
  from testlib import batch as batch_util  # pylint: disable=import-outside-toplevel
  out = []
  for k in range(n):
    segments = [("text", 12 + 3 * k), ("image", 256, 256), ("text", 24 - 2 * k)]
    ours, release = batch_util.build([[segments]], cfg, 256, seed=100 + k)
    smp = release[0][0]
    a, b = smp["span"]
    ids = ours["input_ids"][0, a:b]
    out.append(({"input_ids": ids, "token_hw": ours["token_hw"][0, a:b],
                 "pixel_values": ours["pixel_values"][0, a:b][ids == cfg.img_context_token_id]},
                {"input_ids": smp["input_ids"][None], "pixel_values": smp["pixel_values"],
                 "grid_hw": smp["grid_hw"]}))
  return out


def floors(cfg, params, batch: list[dict]) -> dict:
  """The prefill's floor on this machine [s] and the decoding's ceiling [tokens/s]
  (module docstring), with the measured peak [FLOP/s] and bandwidth [B/s]."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from neo_jax.train import flops  # pylint: disable=import-outside-toplevel
  peak = flops.measure_peak_flops("float32", n=2048, reps=10)
  head = params["lm_head"]["kernel"]
  total = jax.jit(jnp.sum)
  total(head).block_until_ready()
  best = float("inf")
  for _ in range(10):
    t0 = time.perf_counter()
    total(head).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  bandwidth = head.nbytes / best
  counts = flops.StepFlops(cfg, params, jax.tree_util.tree_map(lambda _: True, params))
  decoder, vision = counts.groups["decoder"][0], counts.groups["vision"][0]  # weights
  body_flops = 0.0
  for p in batch:
    n, nv = len(p["input_ids"]), len(p["pixel_values"])
    body_flops += 2 * decoder * n + 2 * vision * nv + counts.attn_per_pair * n * (n + 1) / 2
  body_bytes = 4 * (decoder + vision)
  head_flops = 2 * head.size * len(batch)
  floor = (max(body_flops / peak, body_bytes / bandwidth)
           + max(head_flops / peak, head.nbytes / bandwidth))
  # A decode step reads every decoder weight and the head once and multiplies each
  # row's token through them (the cache's attention left out: a lower bound).
  step = max(2 * len(batch) * (decoder + head.size) / peak,
             (4 * decoder + head.nbytes) / bandwidth)
  return {"ttft_floor_s": floor, "peak_gflops": peak / 1e9,
          "bandwidth_gbs": bandwidth / 1e9, "prefill_gflop": (body_flops + head_flops) / 1e9,
          "tokens_per_s_ceiling": len(batch) / step}


def ours_measure(a) -> dict:
  """One fresh process: our cached decoder on ``a.batch`` prompts (medians of
  ``a.rounds`` calls after a compiling one)."""
  import jax  # pylint: disable=import-outside-toplevel
  from neo_jax.infer import decode  # pylint: disable=import-outside-toplevel
  cfg = model_config(a)
  params = jax.device_put(params_of(cfg, a.seed))
  batch = [p for p, _ in prompts(cfg, a.batch, a.seed)]
  gen = decode.Generator(cfg)
  gen.generate(params, batch, max_new_tokens=a.new_tokens)     # compiles
  compile_s = gen.timing["compile_s"]
  floor = floors(cfg, params, batch)
  ttft, rate = [], []
  for _ in range(a.rounds):
    tokens = gen.generate(params, batch, max_new_tokens=a.new_tokens)
    t = gen.timing
    ttft.append(t["prefill_s"])
    rate.append(t["new_tokens"] / (t["prefill_s"] + t["decode_s"]))
  return {"side": "ours", "batch": a.batch, "ttft_s": float(np.median(ttft)),
          "new_tokens": sum(len(x) for x in tokens), "rounds": a.rounds,
          "tokens_per_s": float(np.median(rate)), "ttft_all_s": ttft,
          "tokens_per_s_all": rate, "compile_s": compile_s,
          "peak_rss_gib": benchlib.hwm_mib() / 1024, "tokens": tokens, **floor}


def release_measure(a) -> dict:
  """One fresh process: the release's ``generate``, one prompt per call."""
  import torch  # pylint: disable=import-outside-toplevel
  from transformers import AutoModel  # pylint: disable=import-outside-toplevel
  from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # pylint: disable=import-outside-toplevel
  cfg = model_config(a)
  model = AutoModel.from_pretrained(a.release_one, trust_remote_code=True,
                                    torch_dtype=torch.float32)
  model.eval()
  model.img_context_token_id = cfg.img_context_token_id
  model.img_start_token_id = cfg.img_start_token_id
  if a.release_attn == "sdpa":
    attn_module = sys.modules[type(model.language_model.model.layers[0].self_attn).__module__]
    attn_module.eager_attention_forward = ALL_ATTENTION_FUNCTIONS["sdpa"]
  banned = [cfg.img_start_token_id, cfg.img_context_token_id, cfg.img_end_token_id]

  def generate(p, n):
    ids = torch.from_numpy(p["input_ids"])
    with torch.no_grad():
      out = model.generate(pixel_values=torch.from_numpy(p["pixel_values"]), input_ids=ids,
                           grid_hw=torch.from_numpy(p["grid_hw"]),
                           attention_mask=torch.ones_like(ids), max_new_tokens=n,
                           min_new_tokens=n, do_sample=False, suppress_tokens=banned,
                           eos_token_id=None, pad_token_id=0)
    return [int(x) for x in out[0][-n:]]

  batch = [r for _, r in prompts(cfg, a.batch, a.seed)]
  generate(batch[0], min(4, a.new_tokens))                       # warm-up
  ttft_all, rate = [], []
  for _ in range(a.rounds):
    ttft, wall, tokens = 0.0, 0.0, []
    for p in batch:
      t0 = time.perf_counter()
      generate(p, 1)
      ttft += time.perf_counter() - t0
      t0 = time.perf_counter()
      tokens.append(generate(p, a.new_tokens))
      wall += time.perf_counter() - t0
    ttft_all.append(ttft)
    rate.append(sum(len(x) for x in tokens) / wall)
  return {"side": "release", "batch": a.batch, "attn": a.release_attn,
          "ttft_s": float(np.median(ttft_all)), "new_tokens": sum(len(x) for x in tokens),
          "rounds": a.rounds, "tokens_per_s": float(np.median(rate)), "ttft_all_s": ttft_all,
          "tokens_per_s_all": rate, "threads": torch.get_num_threads(),
          "peak_rss_gib": benchlib.hwm_mib() / 1024, "tokens": tokens}


def export(a, directory: str) -> None:
  """Our random parameters as the release's Hugging Face folder."""
  from neo_jax.convert import export as export_lib  # pylint: disable=import-outside-toplevel
  cfg = model_config(a)
  export_lib.export_release(export_lib.TreeSource(params_of(cfg, a.seed)), cfg, directory,
                            dtype="float32", modeling_dir=a.release_dir,
                            write_tokenizer=False, progress=False)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--batches", default="1,8")
  ap.add_argument("--new_tokens", type=int, default=128)
  ap.add_argument("--hidden", type=int, default=256)
  ap.add_argument("--layers", type=int, default=8)
  ap.add_argument("--init_std", type=float, default=0.1,
                  help="random weights' std (larger spreads the logits: fewer near-ties)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--rounds", type=int, default=3, help="timed calls per side (medians)")
  ap.add_argument("--release_attn", default="eager", choices=("eager", "sdpa"))
  ap.add_argument("--release_dir", default=os.environ.get("NEO_RELEASE_DIR"))
  ap.add_argument("--workdir", default=None, help="the export (default: a temp dir)")
  ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
  ap.add_argument("--ours_one", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--release_one", default=None, help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a.ours_one:
    print(json.dumps(ours_measure(a)))
    return
  if a.release_one:
    print(json.dumps(release_measure(a)))
    return
  if not a.release_dir:
    sys.exit("Set NEO_RELEASE_DIR (or --release_dir) to the release's to_hf folder.")
  directory = os.path.join(a.workdir or tempfile.mkdtemp(prefix="neo_decode_vs_release_"),
                           "export")
  export(a, directory)
  common = [f"--new_tokens={a.new_tokens}", f"--hidden={a.hidden}", f"--layers={a.layers}",
            f"--init_std={a.init_std}", f"--seed={a.seed}", f"--rounds={a.rounds}"]
  rows, bad = [], []
  for b in (int(x) for x in a.batches.split(",")):
    o = benchlib.run_fresh(__file__, common + [f"--batch={b}", "--ours_one"])
    r = benchlib.run_fresh(__file__, common + [f"--batch={b}", f"--release_one={directory}",
                                               f"--release_attn={a.release_attn}"])
    for k, (x, y) in enumerate(zip(o.pop("tokens"), r.pop("tokens"))):
      if x != y:
        first = next(i for i, (u, v) in enumerate(zip(x + [None], y + [None])) if u != v)
        bad.append(f"batch {b}, prompt {k}: first difference at token {first} "
                   f"(ours {x[first:first + 4]}, release {y[first:first + 4]})")
    print(json.dumps(o), file=sys.stderr, flush=True)
    print(json.dumps(r), file=sys.stderr, flush=True)
    rows.append((b, o, r))
  print(f"config A size (hidden {a.hidden}, {a.layers} layers, vocab "
        f"{train_step.VOCABS['A']}), float32, greedy, {a.new_tokens} new tokens, one-image "
        f"prompts; release attention {a.release_attn}")
  print(f"medians of {a.rounds} rounds; TTFT floor: prefill FLOPs / measured peak + head "
        "bytes / measured bandwidth; tokens/s ceiling: a step's weight bytes / measured "
        "bandwidth (module docstring)")
  print("| batch | ours tokens/s | release tokens/s | ratio | tokens/s ceiling | "
        "largest possible ratio | ours TTFT s | release TTFT s | "
        "TTFT ratio | TTFT floor s | largest possible TTFT ratio | peak GFLOP/s | "
        "bandwidth GB/s | ours peak RSS GiB | release peak RSS GiB | tokens equal |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for b, o, r in rows:
    same = not any(s.startswith(f"batch {b},") for s in bad)
    print(f"| {b} | {o['tokens_per_s']:.1f} | {r['tokens_per_s']:.1f} | "
          f"{o['tokens_per_s'] / r['tokens_per_s']:.2f}x | {o['tokens_per_s_ceiling']:.0f} | "
          f"{o['tokens_per_s_ceiling'] / r['tokens_per_s']:.2f}x | {o['ttft_s']:.4f} | "
          f"{r['ttft_s']:.4f} | {r['ttft_s'] / o['ttft_s']:.2f}x | {o['ttft_floor_s']:.4f} | "
          f"{r['ttft_s'] / o['ttft_floor_s']:.2f}x | {o['peak_gflops']:.0f} | "
          f"{o['bandwidth_gbs']:.0f} | "
          f"{o['peak_rss_gib']:.2f} | {r['peak_rss_gib']:.2f} | {'yes' if same else 'NO'} |")
  if bad:
    sys.exit("Different tokens: " + "; ".join(bad))


if __name__ == "__main__":
  main()
