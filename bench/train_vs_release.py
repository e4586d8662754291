"""Train step against the authors' release, side by side: tokens/s, peak RSS, ratios.

Issue 28, goal 1. The workload is ``bench/train_step.py``'s (configs A, vocabulary
151,936, and B, 4,096: hidden 256, 8 layers of which 4 pre-Buffer, one packed
2048-token row of 4 samples, two 256x256 images, fp32, AdamW, no remat). Both sides
start from the same weights: ours initialised as the trainer does
(``train.setup.Setup.init_state``), exported with ``neo_jax.convert`` and loaded by the
release's ``to_hf`` ``NEOChatModel`` (``AutoModel.from_pretrained(...,
trust_remote_code=True)``, float32), so the first step's loss must agree (printed, and
the run fails if it does not).

* Ours: ``bench/train_step.py --one`` in a fresh process (the trainer's ``Setup``:
  state, donated jitted step, the project's default attention on CPU).
* The release: its modules driven as its ``VLMTrainKit`` trains a packed row (the
  ``to_hf`` ``NEOChatModel.forward`` raises ``NotImplementedError``; its ``generate``
  path is the one ``tests/testlib/release.py`` drives): ``get_thw_indexes`` per sample,
  ``extract_feature`` on both images, the embedding substitution, every decoder layer
  with the packed mixed mask (block-causal within each sample, as its
  ``create_block_causal_mask``, and no attention across samples), ``norm``, ``lm_head``
  over all positions, the weighted cross entropy of its ``loss_function``
  (``modeling_neo_qwen3.py``) with our per-token weights, backward,
  ``clip_grad_norm_`` (1.0) and ``torch.optim.AdamW`` (b1 0.9, b2 0.95, eps 1e-8, decay
  0.01 off norms and biases), as ours. Attention: ``--release_attn sdpa`` (default:
  transformers' ``sdpa_attention_forward`` in place of the eager function the ``to_hf``
  code hard-codes) or ``eager``.

Each measurement is a fresh process (peak RSS = its VmHWM, state building, compile /
load and steps included); the sides alternate ``--rounds`` times and the table reports
medians and the ratios of this run. Only meaningful on a quiet machine.

    NEO_RELEASE_DIR=$EXTRACT/VLMEvalKit/vlmeval/vlm/neo/to_hf JAX_PLATFORMS=cpu \\
        PYTHONPATH=. python bench/train_vs_release.py --configs A,B --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # pylint: disable=wrong-import-position
import train_step  # pylint: disable=wrong-import-position

MEAN = np.asarray((0.485, 0.456, 0.406), np.float32)
STD = np.asarray((0.229, 0.224, 0.225), np.float32)


def release_pixels(tokens: np.ndarray, side: int, patch: int, k: int = 2) -> np.ndarray:
  """Our per-token pixels ``[side * side, k * k, 3 P P] uint8`` of one image -> the
  release's normalised row-major patch grid ``[(side k)^2, 3 P P] float32`` (the layout
  of ``tests/testlib/batch.py``, inverted: token ``(r, c)``, sub-patch ``(i, j)`` is
  patch ``(r k + i, c k + j)``; channels are the major axis of ``3 P P``)."""
  g = side * k
  x = tokens.reshape(side, side, k, k, 3, patch * patch).transpose(0, 2, 1, 3, 4, 5)
  x = x.reshape(g * g, 3, patch * patch).astype(np.float32) / 255.0
  return ((x - MEAN[None, :, None]) / STD[None, :, None]).reshape(g * g, -1)


def prepare(name: str, a, workdir: str) -> str:
  """Exports the initial weights of config ``name`` and writes the release's inputs.

  Returns the config's directory: ``export/`` (the release's HF folder) and
  ``inputs.npz`` (packed ids, segments, per-sample spans, pixels, shifted labels and
  weights)."""
  import jax  # pylint: disable=import-outside-toplevel
  from neo_jax.convert import export as export_lib  # pylint: disable=import-outside-toplevel
  from neo_jax.model import loss as loss_lib  # pylint: disable=import-outside-toplevel
  from neo_jax.train import setup as setup_lib  # pylint: disable=import-outside-toplevel
  out = os.path.join(workdir, name)
  os.makedirs(out, exist_ok=True)
  config = train_step.make_config(train_step.VOCABS[name], a.impl, a)
  cfg = config.model
  setup = setup_lib.Setup(config, mesh=setup_lib.sharding.make_mesh(
      dict(config.mesh), devices=jax.devices()[:1]))
  params = jax.device_get(setup.init_state(0).params)
  export_lib.export_release(export_lib.TreeSource(params), cfg, os.path.join(out, "export"),
                            dtype="float32", modeling_dir=a.release_dir,
                            write_tokenizer=False, progress=False)
  batch = train_step.workload_batch(a.seq, train_step.VOCABS[name], cfg)
  t = loss_lib.make_targets(batch["labels"], batch["segment_ids"], mode=cfg.loss_weighting)
  ids, seg = batch["input_ids"][0], batch["segment_ids"][0]
  ctx = ids == cfg.img_context_token_id
  starts = np.flatnonzero(ids == cfg.img_start_token_id)
  pix, grids = [], []
  for s in starts:   # each image: its <IMG_CONTEXT> run after <img>
    n = int(np.argmin(ctx[s + 1:]))
    side = int(round(n ** 0.5))
    pix.append(release_pixels(batch["pixel_values"][0, s + 1:s + 1 + n], side, cfg.patch_size))
    grids.append((2 * side, 2 * side))
  bounds = np.flatnonzero(np.diff(np.concatenate([[-1], seg, [-1]])))
  spans = np.stack([bounds[:-1], bounds[1:]], 1)
  spans = spans[seg[spans[:, 0]] > 0]
  image_sample = np.searchsorted(spans[:, 1], starts, side="right")
  np.savez(os.path.join(out, "inputs.npz"), input_ids=ids.astype(np.int64),
           segment_ids=seg.astype(np.int64), spans=spans,
           pixel_values=np.concatenate(pix), grid_hw=np.asarray(grids, np.int64),
           image_sample=image_sample,
           shift_labels=np.where(np.asarray(t.weight[0, :-1]) > 0, np.asarray(t.target[0, :-1]),
                                 -100).astype(np.int64),
           shift_weight=np.asarray(t.weight[0, :-1], np.float32),
           img_ids=np.asarray([cfg.img_start_token_id, cfg.img_context_token_id,
                               cfg.img_end_token_id]))
  return out


def release_measure(directory: str, a) -> dict:
  """One fresh process: the release's model trained on the packed row (module docstring)."""
  import torch  # pylint: disable=import-outside-toplevel
  from transformers import AutoModel  # pylint: disable=import-outside-toplevel
  from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # pylint: disable=import-outside-toplevel
  inp = dict(np.load(os.path.join(directory, "inputs.npz")))
  model = AutoModel.from_pretrained(os.path.join(directory, "export"), trust_remote_code=True,
                                    torch_dtype=torch.float32)
  model.img_start_token_id, model.img_context_token_id = (int(inp["img_ids"][0]),
                                                          int(inp["img_ids"][1]))
  attn_module = sys.modules[type(model.language_model.model.layers[0].self_attn).__module__]
  if a.release_attn == "sdpa":
    attn_module.eager_attention_forward = ALL_ATTENTION_FUNCTIONS["sdpa"]
  model.train()
  ids = torch.from_numpy(inp["input_ids"])
  seg = torch.from_numpy(inp["segment_ids"])
  pix, grid = torch.from_numpy(inp["pixel_values"]), torch.from_numpy(inp["grid_hw"])
  labels, weight = torch.from_numpy(inp["shift_labels"]), torch.from_numpy(inp["shift_weight"])
  indexes = []
  for k, (s, e) in enumerate(inp["spans"]):
    g = grid[torch.from_numpy(inp["image_sample"] == k)]
    indexes.append(model.get_thw_indexes(ids[s:e], g if len(g) else None))
  indexes = torch.cat(indexes, dim=1)                              # [3, S]
  t = indexes[0]
  same = seg[:, None] == seg[None, :]
  causal = torch.arange(len(ids))[None, :] <= torch.arange(len(ids))[:, None]
  visible = same & ((t[None, :] == t[:, None]) | causal)           # create_block_causal_mask, per sample
  mask = torch.where(visible, 0.0, float("-inf"))[None, None]
  s = len(ids)
  position_ids, cache_position = torch.arange(s)[None], torch.arange(s)
  lm = model.language_model
  decay = [p for n, p in model.named_parameters() if "norm" not in n and not n.endswith("bias")]
  no_decay = [p for n, p in model.named_parameters() if "norm" in n or n.endswith("bias")]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=5e-5, betas=(0.9, 0.95), eps=1e-8)

  def step():
    vit = model.extract_feature(pix, grid_hw=grid)
    emb = lm.get_input_embeddings()(ids[None]).clone()
    emb[0, ids == model.img_context_token_id] = vit.to(emb.dtype)
    h = emb
    for layer in lm.model.layers:
      h = layer(h, indexes=indexes, attention_mask=mask, position_ids=position_ids,
                past_key_values=None, use_cache=False, cache_position=cache_position)
      h = h[0] if isinstance(h, tuple) else h
    logits = lm.lm_head(lm.model.norm(h))[0, :-1].float()
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none", ignore_index=-100)
    loss = (ce * weight).sum() / weight.sum().clamp(min=1e-5)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())

  losses, times = [], []
  for i in range(a.warmup + a.steps):
    t0 = time.perf_counter()
    losses.append(step())
    if i >= a.warmup:
      times.append(time.perf_counter() - t0)
  t_med = statistics.median(times)
  return {"side": "release", "attn": a.release_attn, "step_s": t_med, "tokens": s,
          "tokens_per_s": s / t_med, "peak_rss_gib": benchlib.hwm_mib() / 1024,
          "first_loss": losses[0], "loss": losses[-1], "threads": torch.get_num_threads()}


def ours_measure(name: str, a) -> dict:
  """``bench/train_step.py --one`` in a fresh process."""
  args = [f"--one={name}:{a.impl}"] + [f"--{k}={getattr(a, k)}" for k in (
      "seq", "hidden", "layers", "block", "max_supervised", "max_visual", "warmup", "steps")]
  r = benchlib.run_fresh(train_step.__file__, args)
  return dict(r, side="ours")


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--configs", default="A,B")
  ap.add_argument("--rounds", type=int, default=3, help="alternating measurements per side")
  ap.add_argument("--impl", default="auto", help="our attention_impl")
  ap.add_argument("--release_attn", default="sdpa", choices=("sdpa", "eager"))
  ap.add_argument("--release_dir", default=os.environ.get("NEO_RELEASE_DIR"))
  ap.add_argument("--workdir", default=None, help="exports and inputs (default: a temp dir)")
  ap.add_argument("--seq", type=int, default=2048)
  ap.add_argument("--hidden", type=int, default=256)
  ap.add_argument("--layers", type=int, default=8)
  ap.add_argument("--block", type=int, default=256)
  ap.add_argument("--max_supervised", type=int, default=1280)
  ap.add_argument("--max_visual", type=int, default=128,
                  help="our patch embedder on the visual positions only (the release "
                       "embeds only its images); 0 = every position")
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--loss_rtol", type=float, default=1e-4,
                  help="first-step losses of the two sides must agree to this")
  ap.add_argument("--release_one", default=None, help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a.release_one:
    print(json.dumps(release_measure(a.release_one, a)))
    return
  if not a.release_dir:
    sys.exit("Set NEO_RELEASE_DIR (or --release_dir) to the release's to_hf folder.")
  workdir = a.workdir or tempfile.mkdtemp(prefix="neo_train_vs_release_")
  rows = {}
  for name in a.configs.split(","):
    directory = prepare(name, a, workdir)
    release_args = [f"--release_one={directory}", f"--release_attn={a.release_attn}",
                    f"--warmup={a.warmup}", f"--steps={a.steps}"]
    for r in range(a.rounds):
      for side in (("ours", "release") if r % 2 == 0 else ("release", "ours")):
        m = (ours_measure(name, a) if side == "ours"
             else benchlib.run_fresh(os.path.abspath(__file__), release_args))
        rows.setdefault((name, side), []).append(m)
        print(json.dumps(dict(m, config=name, round=r)), file=sys.stderr, flush=True)
  print(f"seq {a.seq}, {a.layers} layers, hidden {a.hidden}; ours: impl {a.impl}, block "
        f"{a.block}, max_supervised {a.max_supervised}, max_visual {a.max_visual}; release: "
        f"{a.release_attn}; median of {a.steps} steps after {a.warmup}, median of "
        f"{a.rounds} alternating fresh processes per side")
  print("| config | ours tokens/s | release tokens/s | ratio | ours peak RSS GiB | release "
        "peak RSS GiB | RSS ratio | first loss ours / release |")
  print("|---|---|---|---|---|---|---|---|")
  bad = []
  for name in a.configs.split(","):
    o, r = rows[(name, "ours")], rows[(name, "release")]
    ot = statistics.median(m["tokens_per_s"] for m in o)
    rt = statistics.median(m["tokens_per_s"] for m in r)
    om = max(m["peak_rss_gib"] for m in o)
    rm = max(m["peak_rss_gib"] for m in r)
    ol, rl = o[0]["first_loss"], r[0]["first_loss"]
    if abs(ol - rl) > a.loss_rtol * abs(rl):
      bad.append(f"{name}: first-step loss ours {ol:.6f} vs release {rl:.6f}")
    print(f"| {name} (vocab {train_step.VOCABS[name]}) | {ot:.0f} | {rt:.0f} | {ot / rt:.2f}x | "
          f"{om:.2f} | {rm:.2f} | {om / rm:.2f} | {ol:.5f} / {rl:.5f} |")
  if bad:
    sys.exit("Different first-step losses (not the same model / data): " + "; ".join(bad))


if __name__ == "__main__":
  main()
