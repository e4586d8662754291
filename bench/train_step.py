"""One jitted train step on issue 16's workload: tokens/s, achieved FLOP/s, peak RSS.

Workload (the side-by-side with the authors' release, issue 16): hidden 256, MLP
768, 8 layers of which 4 pre-Buffer, 4 query / 2 kv heads of width 64, vision
width 256, untied head, fp32, no remat; one packed sequence of 2048 tokens holding
4 samples of 512; the first two samples open with a 256x256 image (64 visual
tokens between ``<img>`` / ``</img>``); each sample's text is 1/3 question, 2/3
supervised answer (1276 supervised positions). Config A: vocabulary 151936;
config B: 4096. ``--layers`` / ``--hidden`` / ``--seq`` scale it.

Each (config, attention impl) runs in a fresh process (peak RSS is the process's
VmHWM); the matmul peak is measured in that process (``flops.peak_flops_per_device``:
a 2048^3 float32 matmul), and the achieved FLOP/s are the model FLOPs of the step
(``flops.StepFlops``: matmuls of the trainable and frozen weights, the real
attention pairs) over the step time.

    JAX_PLATFORMS=cpu PYTHONPATH=. python bench/train_step.py --configs A,B --impls xla,xla_blockwise
        [--max_visual 128]   # the patch embedder on the 128 visual positions only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # pylint: disable=wrong-import-position

VOCABS = {"A": 151936, "B": 4096}


def workload_batch(seq: int, vocab: int, cfg) -> dict:
  """The packed sequence of the module docstring as a ``[1, seq]`` batch."""
  from neo_jax.core import batch as batch_lib  # pylint: disable=import-outside-toplevel
  from neo_jax.core import geometry  # pylint: disable=import-outside-toplevel
  token_pixels = geometry.token_pixels_shape(cfg.patch_size)   # (4, 3 P P)
  rng = np.random.default_rng(0)
  per = seq // 4
  side = 8  # 256 px / (16 px patches x 2 merge) = 8 x 8 visual tokens
  samples = []
  for n in range(4):
    ids, hw, labels = [], [], []
    pixels = np.zeros((0,) + token_pixels, np.uint8)
    if n < 2:
      ctx = side * side
      ids += [cfg.img_start_token_id] + [cfg.img_context_token_id] * ctx + [cfg.img_end_token_id]
      hw += [(0, 0)] + [(r, c) for r in range(side) for c in range(side)] + [(0, 0)]
      pixels = rng.integers(0, 256, size=(ctx,) + token_pixels, dtype=np.uint8)
    text = per - len(ids)
    question = text - round(2 * text / 3)
    # Text ids away from the special ids at the end of the vocabulary.
    body = rng.integers(10, min(vocab, cfg.img_start_token_id) - 10, size=text).tolist()
    labels = [-100] * (len(ids) + question) + body[question:]
    ids += body
    hw += [(0, 0)] * text
    samples.append({"input_ids": np.asarray(ids, np.int32), "token_hw": np.asarray(hw, np.int32),
                    "pixel_values": pixels, "labels": np.asarray(labels, np.int32)})
  return batch_lib.assemble_batch([samples], seq, pad_id=0, img_context_id=cfg.img_context_token_id,
                                  patch_size=cfg.patch_size)


def make_config(vocab: int, impl: str, a):
  """The training ``ConfigDict`` of the workload (1 device, AdamW, no remat, fp32)."""
  from neo_jax.configs import common  # pylint: disable=import-outside-toplevel
  c = common.base_config("tiny")
  m = c.model
  m.vocab_size = vocab
  m.hidden_size, m.intermediate_size = a.hidden, 3 * a.hidden
  m.num_llm_layers, m.num_prebuffer_layers = a.layers - a.layers // 2, a.layers // 2
  m.num_heads, m.num_kv_heads, m.head_dim = 4, 2, 64
  m.vision_hidden = 256
  m.tie_word_embeddings = False
  m.dtype, m.param_dtype = "float32", "float32"
  m.remat_policy = "none"
  m.attention_impl = impl
  m.attention_block_q = m.attention_block_kv = a.block
  m.max_supervised_tokens = a.max_supervised
  m.max_visual_tokens = a.max_visual
  # Special ids inside a small vocabulary (config B): the last three rows.
  if vocab < m.img_context_token_id:
    m.img_start_token_id, m.img_context_token_id, m.img_end_token_id = vocab - 3, vocab - 2, vocab - 1
  c.seq_len, c.batch_size = a.seq, 1
  c.mesh = {"data": 1, "fsdp": 1, "tensor": 1, "context": 1}
  c.train.warmup_steps = 1
  return c


def _measure(name: str, impl: str, a) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from neo_jax.train import flops, setup as setup_lib  # pylint: disable=import-outside-toplevel
  config = make_config(VOCABS[name], impl, a)
  peak, source = flops.peak_flops_per_device("float32")
  setup = setup_lib.Setup(config, mesh=setup_lib.sharding.make_mesh(dict(config.mesh),
                                                                   devices=jax.devices()[:1]))
  batch = workload_batch(a.seq, VOCABS[name], config.model)
  state = setup.init_state(0)
  jax.block_until_ready(state)
  rss_state = benchlib.hwm_mib()
  t0 = time.perf_counter()
  step = setup.compile_train_step(log=lambda s: None)
  compile_s = time.perf_counter() - t0
  rss_compile = benchlib.hwm_mib()
  temp = step.memory_analysis().temp_size_in_bytes
  batch = jax.device_put(batch, setup.batch_shardings)
  base = benchlib.reset_peak()
  first_loss = None
  for _ in range(a.warmup):
    state, metrics = step(state, batch)
    if first_loss is None:   # the loss of the initial parameters
      first_loss = float(metrics["loss"])
  jax.block_until_ready(state)
  times = []
  for _ in range(a.steps):
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
  m = jax.device_get(metrics)
  model_flops = flops.StepFlops(config.model, setup.abstract_state.params, setup.trainable).step(
      tokens=float(m["tokens"]), visual_tokens=float(m["visual_tokens"]),
      head_rows=float(m["supervised_tokens"]), attention_pairs=float(m["attention_pairs"]))
  t = float(np.median(times))
  return {"config": name, "impl": impl, "vocab": VOCABS[name], "step_s": t,
          "step_s_min": min(times), "tokens": int(m["tokens"]),
          "supervised": int(m["supervised_tokens"]), "tokens_per_s": float(m["tokens"]) / t,
          "model_tflop": model_flops / 1e12, "achieved_gflops": model_flops / t / 1e9,
          "peak_gflops": peak / 1e9, "peak_source": source,
          "fraction_of_peak": model_flops / t / peak, "compile_s": compile_s,
          "peak_rss_gib": max(benchlib.hwm_mib(), rss_compile) / 1024,
          "rss_after_init_gib": rss_state / 1024, "rss_peak_compile_gib": rss_compile / 1024,
          "steps_peak_gib": benchlib.hwm_mib() / 1024, "steps_rss_start_gib": base / 1024,
          "xla_temp_gib": temp / 2 ** 30, "loss": float(m["loss"]), "first_loss": first_loss}


def add_workload_args(ap: argparse.ArgumentParser, max_visual: int) -> None:
  """The workload's size flags (``make_config`` reads them), shared by the bench scripts
  that build this step (``train_step_hlo.py``, ``train_step_memory.py``)."""
  ap.add_argument("--seq", type=int, default=2048)
  ap.add_argument("--hidden", type=int, default=256)
  ap.add_argument("--layers", type=int, default=8, help="half of them pre-Buffer")
  ap.add_argument("--block", type=int, default=256, help="blockwise / kernel block size")
  ap.add_argument("--max_supervised", type=int, default=1280,
                  help="gathered LM-head rows (0 = the head on every position)")
  ap.add_argument("--max_visual", type=int, default=max_visual,
                  help="gathered patch-embedder positions (0 = every position; the "
                       "workload has 128 visual tokens)")


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--configs", default="A,B")
  ap.add_argument("--impls", default="xla,xla_blockwise")
  add_workload_args(ap, max_visual=0)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a.one:
    name, impl = a.one.split(":")
    print(json.dumps(_measure(name, impl, a)))
    return
  rows = []
  passthrough = [f"--{k}={getattr(a, k)}" for k in ("seq", "hidden", "layers", "block",
                                                    "max_supervised", "max_visual", "warmup",
                                                    "steps")]
  for name in a.configs.split(","):
    for impl in a.impls.split(","):
      rows.append(benchlib.run_fresh(__file__, [f"--one={name}:{impl}"] + passthrough))
      print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  print(f"seq {a.seq}, {a.layers} layers, hidden {a.hidden}, block {a.block}, "
        f"max_supervised {a.max_supervised}, max_visual {a.max_visual}; median of {a.steps} "
        f"steps after {a.warmup}")
  print("| config | impl | step s | tokens/s | model TFLOP/step | achieved GFLOP/s | "
        "x measured matmul peak | peak RSS GiB (compile / steps) | XLA temp GiB | compile s |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['config']} (vocab {r['vocab']}) | {r['impl']} | {r['step_s']:.3f} | "
          f"{r['tokens_per_s']:.0f} | {r['model_tflop']:.3f} | {r['achieved_gflops']:.1f} | "
          f"{r['fraction_of_peak']:.3f} | {r['peak_rss_gib']:.2f} ({r['rss_peak_compile_gib']:.2f}"
          f" / {r['steps_peak_gib']:.2f}) | {r['xla_temp_gib']:.2f} | {r['compile_s']:.1f} |")


if __name__ == "__main__":
  main()
