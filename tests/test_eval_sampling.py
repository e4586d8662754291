"""The repetition penalty (NEO-ov's generation settings): the formula in NumPy float64,
Hugging Face's ``RepetitionPenaltyLogitsProcessor`` on random logits (torch), and the
KV-cache decoder with a penalty against an uncached loop that applies the float64
formula to the model's raw logits at every step."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from neo_jax.core import batch as batch_lib
from neo_jax.infer import decode, generate, sampling
from neo_jax.model.neo import NEO
from testlib import model as mf
from test_infer_decode import _prompts  # pylint: disable=wrong-import-order


def _np_penalty(logits: np.ndarray, history: list[list[int]], penalty: float) -> np.ndarray:
  """CTRL's penalty (Keskar et al. 2019, eq. in §4.1 as transformers implements it):
  each distinct generated token's logit divided by ``penalty`` if >= 0, else multiplied."""
  out = logits.astype(np.float64).copy()
  for row, toks in enumerate(history):
    for t in set(toks):
      v = out[row, t]
      out[row, t] = v * penalty if v < 0 else v / penalty
  return out


def test_penalty_is_the_float64_formula():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (3, 50)).astype(np.float32)
  history = [[1, 1, 7, 49], [], [0, 2, 2, 2, 30]]
  seen = np.zeros((3, 50), bool)
  for r, toks in enumerate(history):
    seen[r, toks] = True
  for p in (1.05, 0.7, 2.0):
    got = np.asarray(sampling.penalize(logits, seen, p))
    np.testing.assert_allclose(got, _np_penalty(logits, history, p), rtol=1e-6, atol=0)
  # The greedy choice reads the penalised logits: a token seen twice is not penalised twice.
  flat = np.zeros((1, 4), np.float32)
  flat[0] = [2.0, 2.1, -1.0, 0.0]
  seen = np.asarray([[False, True, False, False]])
  cfg = sampling.SamplingConfig(repetition_penalty=1.1)
  assert int(sampling.choose(flat, jax.random.PRNGKey(0), cfg, seen)[0]) == 0
  assert int(sampling.choose(flat, jax.random.PRNGKey(0), cfg)[0]) == 1
  with pytest.raises(ValueError, match="repetition_penalty"):
    sampling.SamplingConfig(repetition_penalty=0.0)


@pytest.mark.torch
def test_penalty_equals_transformers_processor():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 4, (4, 300)).astype(np.float32)
  ids = rng.integers(0, 300, (4, 12))
  ids[0, :6] = 5                                      # one token many times
  proc = transformers.RepetitionPenaltyLogitsProcessor(penalty=1.05)
  want = proc(torch.from_numpy(ids), torch.from_numpy(logits.copy())).numpy()
  seen = np.zeros((4, 300), bool)
  for r in range(4):
    seen[r, ids[r]] = True
  got = np.asarray(sampling.penalize(logits, seen, 1.05))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
  assert np.abs(got - logits).max() > 0.1


def _uncached_loop(cfg, step_fn, params, prompts, steps, penalty):
  """The model's raw last-position logits of each whole row (no cache), then ban +
  penalty (float64) + argmax in NumPy."""
  banned = [cfg.img_start_token_id, cfg.img_context_token_id, cfg.img_end_token_id]
  batch, lengths = batch_lib.prompt_batch(prompts, 64, img_context_id=cfg.img_context_token_id,
                                          pad_segment=1)
  out = [[] for _ in prompts]
  for _ in range(steps):
    _, logits = step_fn(params, batch, lengths)
    logits = np.asarray(logits, np.float64)
    logits[:, banned] = -np.inf
    nxt = np.argmax(_np_penalty(logits, out, penalty), axis=-1)
    for i, t in enumerate(nxt):
      out[i].append(int(t))
      batch["input_ids"][i, lengths[i]] = t
      lengths[i] += 1
  return out


def test_cached_greedy_with_penalty_equals_uncached_float64_loop():
  cfg = mf.tiny_config()
  params = mf.init_params(cfg, seed=4)
  prompts = _prompts(cfg)
  steps, penalty = 8, 3.0
  step_fn = generate.make_greedy_step(NEO(cfg))
  want = _uncached_loop(cfg, step_fn, params, prompts, steps, penalty)
  got = decode.Generator(cfg, bucket=16).generate(
      params, prompts, max_new_tokens=steps,
      sampling_cfg=sampling.SamplingConfig(repetition_penalty=penalty))
  assert got == want
  plain = _uncached_loop(cfg, step_fn, params, prompts, steps, 1.0)
  assert plain != want, "the penalty should change some greedy tokens of the tiny model"
  assert max(len(r) - len(set(r)) for r in plain) > max(len(r) - len(set(r)) for r in want)
