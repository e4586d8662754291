"""Issue 26, item 8: evaluation prompts get the host-side checks a training batch gets.

The held-out prompts of the demo data (real images, the real tokenizer) under caps just
below their largest visual-token count and length: building the evaluator raises
``health.EvalPromptError`` naming the first prompt over the cap, with the count an
independent NumPy count gives. The slow test: the decoder sizes its own visual gather,
so the same over-cap prompt decodes exactly as under a cap that holds it (the check
stays for the held-out loss, which runs the model with the configured gather).
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
def test_fault_eval_over_cap_prompt_decodes_like_a_prompt_within_the_cap():
  """Under the training mesh the decoder sizes its visual gather from the prompts: a
  model config whose training cap is below a prompt's visual tokens gives the same
  logits as one whose cap holds them (the model's own forward with that cap makes the
  over-cap rows NaN, ``tests/test_visual_gather.py``, which is why the evaluator still
  refuses such prompts for its held-out loss)."""
  from neo_jax.infer import decode  # pylint: disable=import-outside-toplevel
  c = _config()
  examples = pipeline.make_eval_examples(c.data, split="heldout", limit=2)
  visual = sorted(examples, key=_visual)[-1]
  c.model.max_visual_tokens = _visual(visual) - 1
  setup = trainer.Setup(c)
  params = setup.init_state(0).params
  gen = decode.Generator(c.model, mesh=setup.mesh, rules=setup.rules)
  _, over = gen.generate(params, [visual], max_new_tokens=1, return_logits=True)
  c.model.max_visual_tokens = _visual(visual)
  gen = decode.Generator(c.model, mesh=setup.mesh, rules=setup.rules)
  _, within = gen.generate(params, [visual], max_new_tokens=1, return_logits=True)
  assert np.isfinite(within).all()
  np.testing.assert_array_equal(over, within)
