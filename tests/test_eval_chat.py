"""What the lmms-eval model does without lmms-eval (``neo_jax/eval/chat.py``,
``likelihood.py``): chat messages as records, generation settings from a task's
``generation_kwargs`` over a preset, and continuation log-likelihoods against a NumPy
float64 log-softmax of the model's full-sequence logits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from neo_jax.eval import chat, likelihood, presets
from neo_jax.infer import sampling
from testlib import model as mf
from test_infer_decode import _prompts  # pylint: disable=wrong-import-order


def test_messages_become_one_user_turn():
  img = Image.new("RGB", (8, 8))
  msgs = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
          {"role": "user", "content": [{"type": "image", "url": img},
                                       {"type": "text", "text": "What is it? "},
                                       {"type": "image", "url": "/x.png"},
                                       {"type": "text", "text": " And this?"}]}]
  rec = chat.messages_to_record(msgs, "default system")
  assert rec["image"] == [img, "/x.png"]
  assert rec["conversations"] == [
      {"from": "system", "value": "Be brief."},
      {"from": "human", "value": "<image>\nWhat is it? <image>\n And this?"},
      {"from": "gpt", "value": ""}]
  video = chat.messages_to_record(chat.visuals_to_messages("Which way?", ["/v.mkv"]), "")
  assert video["video"] == "/v.mkv" and "image" not in video
  assert video["conversations"][0] == {"from": "human", "value": "<video>\nWhich way?"}
  with pytest.raises(ValueError, match="audio"):
    chat.messages_to_record([{"role": "user", "content": [{"type": "audio", "url": "a.wav"}]}])
  with pytest.raises(ValueError, match="clips"):
    chat.messages_to_record([{"role": "user", "content": [
        {"type": "video", "url": {"path": "v.mp4", "video_start": 1.0}}]}])


def test_generation_settings_over_a_preset():
  ov = presets.get("neo_ov")
  # No task settings: the preset's sampling and length, the model's system message.
  g = chat.generation(None, ov, ov.max_new_tokens, "Reason step by step.")
  assert g.sampling == sampling.SamplingConfig(temperature=0.6, top_k=20, top_p=0.95,
                                               repetition_penalty=1.05)
  assert g.max_new_tokens == 16384 and g.system == "Reason step by step."
  # A typical lmms-eval task: greedy, 16 tokens; the penalty stays (HF applies it greedily).
  g = chat.generation({"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1,
                       "do_sample": False, "until": ["\n\n"]}, ov, 16384, None)
  assert g.sampling == sampling.SamplingConfig(repetition_penalty=1.05)
  assert g.max_new_tokens == 16
  g = chat.generation({"do_sample": True, "max_pixels": "65536", "upscale": "true",
                       "system_prompt": "A\\nB", "remove_think": True}, None, 8, None)
  assert g.sampling == sampling.SamplingConfig(temperature=1.0, top_k=50)   # HF's defaults
  assert (g.processing, g.upscale, g.system, g.remove_think) == (
      (("max_pixels", 65536),), True, "A\nB", True)
  assert chat.strip_thinking("<think>x\ny</think> 42") == "42"


def test_loglikelihood_equals_float64_log_softmax():
  from neo_jax.core import batch as batch_lib  # pylint: disable=import-outside-toplevel
  from neo_jax.model.neo import NEO  # pylint: disable=import-outside-toplevel
  cfg = mf.tiny_config()
  params = mf.init_params(cfg, seed=4)
  prompts = _prompts(cfg)[:3]
  conts = [[5, 9, 11], [0], [300, 2]]
  rows = [dict(p, input_ids=np.concatenate([p["input_ids"], c]),
               token_hw=np.concatenate([p["token_hw"], np.zeros((len(c), 2), np.int32)]))
          for p, c in zip(prompts, conts)]
  batch, _ = batch_lib.prompt_batch(rows, max(len(r["input_ids"]) for r in rows),
                                    img_context_id=cfg.img_context_token_id, pad_segment=1)
  logits = np.asarray(NEO(cfg).apply({"params": params}, batch["input_ids"],
                                     batch["segment_ids"], batch["token_hw"],
                                     batch["pixel_values"]), np.float64)
  # Row 1's continuation: the model's own most likely token (greedy; position n - 1
  # sees only the prompt, so its logits do not depend on the continuation).
  conts[1] = [int(np.argmax(logits[1, len(prompts[1]["input_ids"]) - 1]))]
  got = likelihood.LogLikelihood(cfg, bucket=16)(params, prompts, conts)
  for r, (p, c, (lp, greedy)) in enumerate(zip(prompts, conts, got)):
    n = len(p["input_ids"])
    sel = logits[r, n - 1:n - 1 + len(c)]
    top = sel.max(-1, keepdims=True)
    logp = sel - top - np.log(np.exp(sel - top).sum(-1, keepdims=True))
    assert lp == pytest.approx(sum(logp[j, t] for j, t in enumerate(c)), rel=1e-5)
    assert greedy == all(int(np.argmax(sel[j])) == t for j, t in enumerate(c))
  assert [g for _, g in got] == [False, True, False]
  with pytest.raises(ValueError, match="empty"):
    likelihood.LogLikelihood(cfg)(params, prompts[:1], [[]])


def test_preset_system_message_on_json_records():
  from neo_jax.eval import runner  # pylint: disable=import-outside-toplevel
  rec = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "x"}]}
  got = runner._with_system(rec, presets.get("neo_ov"))  # pylint: disable=protected-access
  assert got["conversations"][0] == {"from": "system", "value": "Reason step by step."}
  assert runner._with_system(rec, presets.get("neo")) is rec       # NEO sets none
  own = {"conversations": [{"from": "system", "value": "Mine."}] + rec["conversations"]}
  assert runner._with_system(own, presets.get("neo_ov")) is own
