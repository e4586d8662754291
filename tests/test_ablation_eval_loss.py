"""The evaluator's held-out loss (``eval.loss``, what the Table 3 study stops early on).

Real held-out examples of the study's config (the digit control and a position task,
the real tokenizer, a 1-layer model of the study's width at random initialisation):
``Evaluator.losses`` equals an independent computation: each example alone (no
padding, no batching) through the model's full logits, the answer tokens' cross
entropy in NumPy float64, averaged per task, then over tasks.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from neo_jax.configs import ablation
from neo_jax.model.neo import NEO
from neo_jax.train import evaluate, trainer


def _config():
  c = ablation.get_config("variant=B,eval_limit=5")
  c.model.num_llm_layers = 1
  for name in list(c.data.sources):
    if name not in ("digit", "grid_read"):
      del c.data.sources[name]
  c.eval.batch_size = 2          # several batches per task, the last one partial
  return c


def _reference(cfg, params, examples) -> dict[str, float]:
  model = NEO(cfg)
  per_task = {}
  for ex in examples:
    row = evaluate.teacher_forced(ex)
    n, ids = len(ex["input_ids"]), row["input_ids"]
    pix = np.zeros((1, len(ids)) + ex["pixel_values"].shape[1:], np.uint8)
    pix[0, ids == cfg.img_context_token_id] = ex["pixel_values"]
    logits = model.apply({"params": params}, ids[None], np.ones((1, len(ids)), np.int32),
                         row["token_hw"][None], pix)
    lg = np.asarray(logits[0], np.float64)
    logp = lg - np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - lg.max(-1, keepdims=True)
    # Position i predicts token i + 1: the answer tokens n.. are predicted from n - 1..
    ce = [-logp[i - 1, ids[i]] for i in range(n, len(ids))]
    per_task.setdefault(ex["task"], []).extend(ce)
  out = {f"loss/{t}": float(np.mean(v)) for t, v in per_task.items()}
  out["loss"] = float(np.mean([out[f"loss/{t}"] for t in per_task]))
  return out


@pytest.mark.slow  # about a minute on 2 cores: `bash scripts/test.sh -m slow`
def test_heldout_loss_equals_a_float64_reference():
  c = _config()
  setup = trainer.Setup(c)
  params = jax.device_get(setup.init_state(1).params)
  ev = evaluate.Evaluator(c, setup)
  assert {ex["task"] for ex in ev.examples} == {"digit", "grid_read"}
  got = ev.losses(params)
  want = _reference(ev.generator.cfg, params, ev.examples)
  assert set(got) == set(want)
  for k, v in want.items():
    assert got[k] == pytest.approx(v, rel=2e-5), k
  # At initialisation the loss is about log(vocabulary), far from a trained model's.
  assert 0.5 * np.log(c.model.vocab_size) < got["loss"] < 2 * np.log(c.model.vocab_size)
  # run() reports it next to the accuracies; a stop request before a batch returns None.
  m = ev.run(params)
  assert m["loss"] == pytest.approx(got["loss"], rel=1e-6) and "acc/grid_read" in m
  assert ev.losses(params, stop=lambda: True) is None


def test_teacher_forced_supervises_exactly_the_answer():
  ex = {"input_ids": np.arange(5, dtype=np.int32), "token_hw": np.ones((5, 2), np.int32),
        "pixel_values": np.zeros((0, 4, 768), np.uint8), "answer_ids": [7, 8, 9]}
  row = evaluate.teacher_forced(ex)
  assert row["input_ids"].tolist() == [0, 1, 2, 3, 4, 7, 8, 9]
  assert row["labels"].tolist() == [-100] * 5 + [7, 8, 9]
  assert row["token_hw"].tolist() == [[1, 1]] * 5 + [[0, 0]] * 3
  with pytest.raises(ValueError, match="answer of 17 tokens"):
    evaluate.teacher_forced(dict(ex, answer_ids=list(range(17))))
