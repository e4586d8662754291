"""Acceptance check against the authors' own PyTorch code (not run in CI).

Builds random tiny NEO models (tied and untied head, with pre-Buffer layers),
exports them with ``neo_jax.convert``, loads each export with the release's
``NEOChatModel`` through ``AutoModel.from_pretrained(..., trust_remote_code=True)``
(the way VLMEvalKit loads NEO) with ``output_loading_info`` and requires no
missing / unexpected / mismatched keys, then compares the release's logits
with our JAX logits on a packed batch of two samples with three images.

The release's ``NEOChatModel.forward`` raises ``NotImplementedError`` and its
``generate`` path takes one sample at a time, so each packed sample is run
through the release's own pieces as its ``generate`` does for the prefill:
``get_thw_indexes`` -> ``extract_feature`` -> embedding substitution ->
``language_model(inputs_embeds=..., indexes=...)`` (block-causal mask from
the t indexes). Our logits come from one packed JAX forward.

Run by ``tests/test_convert_release.py``, which skips unless ``NEO_RELEASE_DIR``
names the release's ``to_hf`` folder (from a throw-away extraction, never inside
this repository; ``$NEO_SRC`` a checkout of github.com/EvolvingLMMs-Lab/NEO, ``$EXTRACT``
an empty folder)::

  git -C "$NEO_SRC" archive HEAD \\
      VLMEvalKit/vlmeval/vlm/neo/to_hf | tar -x -C "$EXTRACT"
  NEO_RELEASE_DIR="$EXTRACT/VLMEvalKit/vlmeval/vlm/neo/to_hf" \\
      bash scripts/test.sh tests/test_convert_release.py -s
"""

from __future__ import annotations

import os

import numpy as np

from neo_jax.convert import convert as cv
from neo_jax.model import config as config_lib
from neo_jax.model.neo import NEO
from testlib import batch as neo_batch_util

# Two packed samples, three images (different sizes).
SEQUENCES = [[
    [("text", 5), ("image", 64, 96), ("text", 4)],
    [("text", 3), ("image", 64, 64), ("text", 2), ("image", 32, 96), ("text", 3)],
]]


def release_logits(model, smp, torch):
  from transformers import DynamicCache  # pylint: disable=import-outside-toplevel
  ids = torch.from_numpy(smp["input_ids"])[None]
  grid_hw = torch.from_numpy(smp["grid_hw"])
  pix = torch.from_numpy(smp["pixel_values"])
  with torch.no_grad():
    indexes = model.get_thw_indexes(ids[0], grid_hw)
    vit = model.extract_feature(pix, grid_hw=grid_hw)
    emb = model.language_model.get_input_embeddings()(ids).clone()
    sel = ids[0] == model.img_context_token_id
    emb[0, sel] = vit.to(emb.dtype)
    s = ids.shape[1]
    out = model.language_model(
        inputs_embeds=emb, indexes=indexes, position_ids=torch.arange(s)[None],
        cache_position=torch.arange(s), past_key_values=DynamicCache(), use_cache=True)
  return out.logits[0].float().numpy()


def export_and_load(release_dir: str, tie: bool, workdir: str):
  """A random tiny NEO exported with ``neo_jax.convert`` and loaded by the release's code.

  Returns:
    ``(cfg, params, model, keys_ok)``: our config and parameters, the release's
    ``NEOChatModel`` (float32, eval mode) and whether loading reported no missing /
    unexpected / mismatched keys (and, tied, a shared head).
  """
  import torch  # pylint: disable=import-outside-toplevel
  from transformers import AutoModel  # pylint: disable=import-outside-toplevel
  cfg = config_lib.get_model_config("tiny", tie_word_embeddings=tie, num_prebuffer_layers=2,
                                    init_std=0.1)
  params = cv.collect(cv.random_leaves(cfg, seed=11))
  rng = np.random.default_rng(5)
  for path in cv.TreeSource(params).paths():
    if path[-1] in ("scale", "bias"):
      d = params
      for name in path[:-1]:
        d = d[name]
      d[path[-1]] = (d[path[-1]] + 0.1 * rng.standard_normal(d[path[-1]].shape)).astype(np.float32)
  dst = os.path.join(workdir, f"export_tie{int(tie)}")
  cv.export_release(cv.TreeSource(params), cfg, dst, dtype="float32", modeling_dir=release_dir,
                    max_shard_bytes=200_000, progress=False)
  model, info = AutoModel.from_pretrained(dst, trust_remote_code=True, torch_dtype=torch.float32,
                                          output_loading_info=True)
  model.eval()
  keys_ok = not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
  print(f"[tie={tie}] {type(model).__name__} loaded; loading info: "
        + ", ".join(f"{k}={info[k]}" for k in ("missing_keys", "unexpected_keys",
                                               "mismatched_keys")))
  if tie:
    same = model.language_model.lm_head.weight.data_ptr() == (
        model.language_model.model.embed_tokens.weight.data_ptr())
    print(f"[tie={tie}] lm_head tied to embed_tokens: {same}")
    keys_ok &= same
  model.img_context_token_id = cfg.img_context_token_id
  model.img_start_token_id = cfg.img_start_token_id
  return cfg, params, model, keys_ok


def check(release_dir: str, tie: bool, workdir: str, tol: float) -> bool:
  """The release's logits on our export equal ours (packed batch of two samples)."""
  import torch  # pylint: disable=import-outside-toplevel
  cfg, params, model, keys_ok = export_and_load(release_dir, tie, workdir)

  seq_len = 64
  ours, release = neo_batch_util.build(SEQUENCES, cfg, seq_len, seed=1)
  got = np.asarray(NEO(cfg).apply({"params": params}, ours["input_ids"], ours["segment_ids"],
                                  ours["token_hw"], ours["pixel_values"]))
  worst = 0.0
  for smp in release[0]:
    a, b = smp["span"]
    err = float(np.max(np.abs(release_logits(model, smp, torch) - got[0, a:b])))
    print(f"[tie={tie}] sample tokens {a}:{b}, images {smp['grid_hw'].tolist()}: "
          f"max |release - ours| = {err:.3e} (logit scale {np.abs(got[0, a:b]).max():.2f})")
    worst = max(worst, err)
  ok = keys_ok and worst <= tol
  print(f"[tie={tie}] {'PASS' if ok else 'FAIL'} (keys ok: {keys_ok}, max err {worst:.3e} <= {tol})")
  return ok


# Generation prompts: one image; two images of different sizes.
GENERATE_PROMPTS = [[("text", 6), ("image", 64, 96), ("text", 5)],
                    [("text", 3), ("image", 64, 64), ("text", 2), ("image", 32, 96), ("text", 4)]]


def check_generate(release_dir: str, tie: bool, workdir: str, new_tokens: int = 12) -> bool:
  """The release's ``NEOChatModel.generate`` (greedy, HF cache) and our KV-cache decoder
  produce the same tokens on a single-image and a two-image prompt. Both exclude the
  image-token ids (ours always; the release via ``suppress_tokens``)."""
  import torch  # pylint: disable=import-outside-toplevel
  from neo_jax.infer import decode  # pylint: disable=import-outside-toplevel
  cfg, params, model, keys_ok = export_and_load(release_dir, tie, workdir)
  image_ids = [cfg.img_start_token_id, cfg.img_context_token_id, cfg.img_end_token_id]
  ok = keys_ok
  for k, segments in enumerate(GENERATE_PROMPTS):
    ours, release = neo_batch_util.build([[segments]], cfg, 128, seed=20 + k)
    smp = release[0][0]
    a, b = smp["span"]
    prompt = {"input_ids": ours["input_ids"][0, a:b], "token_hw": ours["token_hw"][0, a:b],
              "pixel_values": ours["pixel_values"][0, a:b][
                  ours["input_ids"][0, a:b] == cfg.img_context_token_id]}
    got = decode.Generator(cfg).generate(params, [prompt], max_new_tokens=new_tokens)[0]
    ids = torch.from_numpy(smp["input_ids"])[None]
    with torch.no_grad():
      out = model.generate(pixel_values=torch.from_numpy(smp["pixel_values"]), input_ids=ids,
                           grid_hw=torch.from_numpy(smp["grid_hw"]),
                           attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False,
                           suppress_tokens=image_ids, eos_token_id=None, pad_token_id=0)
    want = [int(x) for x in out[0][-new_tokens:]]
    same = got == want
    print(f"[tie={tie}] prompt {k} ({len(smp['grid_hw'])} image(s), {b - a} tokens): "
          f"release {want} ours {got} -> {'same' if same else 'DIFFERENT'}")
    ok &= same
  return ok
