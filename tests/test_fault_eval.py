"""Issue 26, item 8: evaluation prompts get the host-side checks a training batch gets.

The held-out prompts of the demo data (real images, the real tokenizer) under caps just
below their largest visual-token count and length: building the evaluator raises
``health.EvalPromptError`` naming the first prompt over the cap, with the count an
independent NumPy count gives. The slow test shows what the check prevents: the same
over-cap prompt through the decoder gives non-finite logits (the patch embedder's
static gather leaves the extra visual rows NaN), a prompt within the cap finite ones.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from neo_jax.configs import demo
from neo_jax.core import tokens
from neo_jax.data import pipeline
from neo_jax.train import evaluate, health, trainer


def _config():
  c = demo.get_config("steps=1,eval_every=1")
  c.model.num_llm_layers = 1
  c.eval.limit_per_task = 2
  return c


def _visual(ex) -> int:
  return int(np.sum(np.asarray(ex["input_ids"]) == tokens.IMG_CONTEXT_TOKEN_ID))


def test_fault_eval_prompt_over_a_cap_is_a_named_error():
  c = _config()
  examples = pipeline.make_eval_examples(c.data, split="heldout", limit=2)
  most = max(_visual(ex) for ex in examples)
  cap = most - 1
  first = next(ex for ex in examples if _visual(ex) > cap)
  c.model.max_visual_tokens = cap
  setup = trainer.Setup(c)
  with pytest.raises(health.EvalPromptError,
                     match=re.escape(f"record {first['record_id']!r}) has {_visual(first)} visual "
                                     f"tokens, more than model.max_visual_tokens={cap};")):
    evaluate.Evaluator(c, setup)

  c = _config()
  longest = max(len(ex["input_ids"]) for ex in examples)
  first = next(ex for ex in examples if len(ex["input_ids"]) > longest - 1)
  c.model.max_sample_tokens = longest - 1
  with pytest.raises(health.EvalPromptError,
                     match=re.escape(f"record {first['record_id']!r}) has "
                                     f"{len(first['input_ids'])} tokens, more than "
                                     f"model.max_sample_tokens={longest - 1};")):
    evaluate.Evaluator(c, trainer.Setup(c))

  c = _config()
  c.model.max_visual_tokens, c.model.max_sample_tokens = most, longest
  assert len(evaluate.Evaluator(c, trainer.Setup(c)).examples) == len(examples)


@pytest.mark.slow
def test_fault_eval_over_cap_prompt_would_give_non_finite_logits():
  from neo_jax.infer import decode  # pylint: disable=import-outside-toplevel
  c = _config()
  examples = pipeline.make_eval_examples(c.data, split="heldout", limit=2)
  visual = sorted(examples, key=_visual)[-1]
  c.model.max_visual_tokens = _visual(visual) - 1
  setup = trainer.Setup(c)
  params = setup.init_state(0).params
  gen = decode.Generator(c.model, mesh=setup.mesh, rules=setup.rules)
  _, over = gen.generate(params, [visual], max_new_tokens=1, return_logits=True)
  assert not np.isfinite(over).all()
  c.model.max_visual_tokens = _visual(visual)
  gen = decode.Generator(c.model, mesh=setup.mesh, rules=setup.rules)
  _, within = gen.generate(params, [visual], max_new_tokens=1, return_logits=True)
  assert np.isfinite(within).all()
