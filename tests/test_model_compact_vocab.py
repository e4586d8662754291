"""A compact vocabulary (``model.vocab_ids``) against the full-vocabulary model it restricts:
same logits on the kept ids (-inf elsewhere), the loss equal to a float64 NumPy cross
entropy over the kept rows, greedy decoding equal to the full model's with the other ids
banned; the host checks refuse ids without a row; a study's vocabulary holds every id the
sample processor writes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from neo_jax.convert import export
from neo_jax.core.tokens import IGNORE_INDEX
from neo_jax.data import processor as processor_lib
from neo_jax.data import tokenizer as tokenizer_lib
from neo_jax.data import vocabulary
from neo_jax.infer import decode, generate
from neo_jax.model import loss as loss_lib
from neo_jax.model.model_config import ModelConfig
from neo_jax.model.neo import NEO, head_weights
from neo_jax.train import health
from testlib import model as mf

import test_infer_decode as decode_tests


def _compact(cfg, params, ids):
  """The compact config and parameters that keep ``ids`` rows of the full model's."""
  c = cfg.copy_and_resolve_references()
  c.vocab_ids = tuple(int(i) for i in ids)
  c.vocab_size = len(ids)
  p = dict(params)
  p["embed_tokens"] = {"embedding": params["embed_tokens"]["embedding"][np.asarray(ids)]}
  if "lm_head" in params:
    p["lm_head"] = {"kernel": params["lm_head"]["kernel"][:, np.asarray(ids)]}
  return c, p


def _kept(cfg, *id_arrays):
  """Every id the arrays hold plus the image ids plus every third id below 500."""
  keep = {cfg.img_context_token_id, cfg.img_start_token_id, cfg.img_end_token_id}
  keep |= set(range(0, 500, 3))
  for a in id_arrays:
    a = np.asarray(a)
    keep |= set(int(i) for i in a[a != IGNORE_INDEX].ravel())
  return sorted(keep)


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def setup(request):
  cfg = mf.tiny_config(tie_word_embeddings=request.param, loss_weighting="token")
  params = mf.init_params(cfg, seed=3)
  batch = mf.packed_batch(cfg, seed=1).batch
  ids = _kept(cfg, batch["input_ids"], batch["labels"])
  assert len(ids) < 500            # a real restriction: most ids have no row
  return cfg, params, batch, ids


def test_logits_equal_the_full_models_on_kept_ids_and_are_minus_inf_elsewhere(setup):
  cfg, params, batch, ids = setup
  ccfg, cparams = _compact(cfg, params, ids)
  full = np.asarray(mf.logits_fn(cfg)(params, batch))
  got = np.asarray(mf.logits_fn(ccfg)(cparams, batch))
  assert got.shape == full.shape[:-1] + (max(ids) + 1,)
  np.testing.assert_allclose(got[..., ids], full[..., ids], atol=2e-5, rtol=0)
  others = np.setdiff1d(np.arange(got.shape[-1]), ids)
  assert np.all(np.isneginf(got[..., others]))


def test_loss_equals_float64_cross_entropy_over_the_kept_rows(setup):
  cfg, params, batch, ids = setup
  ccfg, cparams = _compact(cfg, params, ids)
  hidden = np.asarray(mf.hidden_fn(ccfg)(cparams, batch), np.float64)
  head, layout = head_weights(cparams, ccfg)
  out = loss_lib.lm_loss(hidden.astype(np.float32), head, batch["labels"],
                         batch["segment_ids"], mode="token", chunk=7, head_layout=layout,
                         vocab_ids=ccfg.vocab_ids)
  # Reference: the next token within the sample, softmax over the kept rows only.
  rows = np.asarray(head, np.float64) if layout == "vd" else np.asarray(head, np.float64).T
  row_of = {t: r for r, t in enumerate(ids)}
  labels, seg = batch["labels"], batch["segment_ids"]
  ces = []
  for b in range(labels.shape[0]):
    for i in range(labels.shape[1] - 1):
      if labels[b, i + 1] != IGNORE_INDEX and seg[b, i + 1] == seg[b, i] and seg[b, i] > 0:
        logits = rows @ hidden[b, i]
        m = logits.max()
        ces.append(m + np.log(np.exp(logits - m).sum()) - logits[row_of[int(labels[b, i + 1])]])
  assert len(ces) > 20
  np.testing.assert_allclose(float(out.weighted_ce / out.weight), np.mean(ces), rtol=2e-5)
  assert int(out.tokens) == len(ces)


def test_greedy_decoding_equals_the_full_model_with_the_other_ids_banned(setup):
  cfg, params, _, _ = setup
  prompts = decode_tests._prompts(cfg)  # pylint: disable=protected-access
  ids = _kept(cfg, *[p["input_ids"] for p in prompts])
  ccfg, cparams = _compact(cfg, params, ids)
  image = (cfg.img_start_token_id, cfg.img_context_token_id, cfg.img_end_token_id)
  banned = tuple(sorted(set(range(cfg.vocab_size)) - set(ids))) + image
  want = generate.greedy_generate(NEO(cfg), params, prompts, max_new_tokens=6,
                                  banned_ids=banned)
  got = decode.Generator(ModelConfig.from_config_dict(ccfg), bucket=16).generate(
      cparams, prompts, max_new_tokens=6)
  assert got == want
  assert all(t in ids for row in got for t in row)
  # The restriction matters: the unrestricted model writes some id without a row.
  free = generate.greedy_generate(NEO(cfg), params, prompts, max_new_tokens=6,
                                  banned_ids=image)
  assert any(t not in ids for row in free for t in row)


def test_host_checks_refuse_ids_without_a_row():
  cfg = ModelConfig.from_config_dict(mf.tiny_config())
  good = {"input_ids": np.array([[1, 2, 500]]), "labels": np.array([[IGNORE_INDEX, 2, 3]])}
  health.check_vocabulary(good, cfg, step=0)
  with pytest.raises(ValueError, match=r"labels .*\[512\]"):
    health.check_vocabulary(dict(good, labels=np.array([[IGNORE_INDEX, 512, 3]])), cfg, 0)
  compact = cfg.replace(vocab_ids=(1, 2, 500, 501, 502), vocab_size=5)
  with pytest.raises(ValueError, match=r"input_ids .*\[7\]"):
    health.check_vocabulary(dict(good, input_ids=np.array([[1, 7, 500]]),
                                 labels=np.array([[IGNORE_INDEX, 2, 2]])), compact, 0)
  with pytest.raises(ValueError, match=r"labels .*\[3\]"):
    health.check_vocabulary(good, compact, step=0)
  with pytest.raises(health.EvalPromptError, match=r"\[9\]"):
    health.check_prompts([{"input_ids": np.array([1, 9, 2])}], compact)
  health.check_prompts([{"input_ids": np.array([1, 2, 501])}], compact)


def test_config_validation_and_json_round_trip():
  cfg = ModelConfig.from_config_dict(mf.tiny_config())
  ok = cfg.replace(vocab_ids=[0, 5, 500, 501, 502], vocab_size=5)
  assert ok.vocab_ids == (0, 5, 500, 501, 502)          # a JSON list becomes a tuple
  assert ModelConfig.from_config_dict(ok.to_dict()) == ok
  hash(ok)                                               # a static jit argument
  with pytest.raises(ValueError, match="vocab_size"):
    cfg.replace(vocab_ids=(0, 500, 501, 502), vocab_size=5)
  with pytest.raises(ValueError, match="strictly increasing"):
    cfg.replace(vocab_ids=(5, 0, 500, 501, 502), vocab_size=5)
  with pytest.raises(ValueError, match=r"image token ids \[502\]"):
    cfg.replace(vocab_ids=(0, 1, 5, 500, 501), vocab_size=5)
  with pytest.raises(ValueError, match="type tuple"):
    cfg.replace(vocab_ids=(0.5,), vocab_size=1)
  compact = mf.tiny_config(vocab_ids=(0, 5, 500, 501, 502), vocab_size=5)
  compact.rope_mode, compact.attention_mask = "native", "mixed"
  with pytest.raises(ValueError, match="compact vocabulary"):
    export.check_release_compatible(compact)


def test_record_vocabulary_holds_every_id_the_processor_writes(tmp_path):
  Image.new("RGB", (64, 32), (200, 10, 10)).save(tmp_path / "a.png")
  records = [
      {"image": "a.png", "conversations": [
          {"from": "human", "value": "<image>\nWhere is the red mark? Answer row,column."},
          {"from": "gpt", "value": "2,3"}]},
      {"conversations": [{"from": "human", "value": "Count: colours, then 17 áé."},
                         {"from": "gpt", "value": "yellow green"},
                         {"from": "human", "value": "Again?"},
                         {"from": "gpt", "value": "no"}]},
  ]
  tok = tokenizer_lib.get_tokenizer("embedded")
  proc = processor_lib.SampleProcessor(processor_lib.ProcessOptions(min_pixels=1024,
                                                                    max_pixels=4096))
  written = set()
  for r in records:
    written |= set(proc.process(dict(r, data_path=str(tmp_path)))["input_ids"].tolist())
  got = vocabulary.record_token_ids(records, tok)
  assert list(got) == sorted(written | vocabulary.special_ids(tok))
  assert tok.pad_id in got and tok.pad_id not in written
  with pytest.raises(ValueError, match="video"):
    vocabulary.record_token_ids([{"video": "v.mp4", "conversations": []}], tok)
  with pytest.raises(ValueError, match="record 'x'"):
    vocabulary.record_token_ids([{"id": "x", "conversations": [
        {"from": "human", "value": "no answer"}]}], tok)
