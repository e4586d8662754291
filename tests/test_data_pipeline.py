"""Pipeline: packing invariants, resume-from-state, bad inputs, strict mode, embedded data."""

import json

import numpy as np
import pytest
from PIL import Image

from testlib import data as ref
from testlib.data import assert_batches_equal, take
from neo_jax.data import embedded
from neo_jax.data import packing
from neo_jax.data import pipeline
from neo_jax.data import processor as processor_lib
from neo_jax.core.batch import IGNORE_INDEX, check_batch


def _check_packed(batch, max_sup=0):
  check_batch(batch)
  ids, labels, seg = batch["input_ids"], batch["labels"], batch["segment_ids"]
  for r in range(ids.shape[0]):
    s = seg[r]
    n = int((s > 0).sum())
    assert (s[:n] > 0).all() and (s[n:] == 0).all()  # padding last
    assert (np.diff(s[:n]) >= 0).all() and (np.diff(s[:n]) <= 1).all() and (n == 0 or s[0] == 1)
    starts = np.flatnonzero(np.diff(np.concatenate([[0], s])) != 0)
    assert (labels[r, starts] == IGNORE_INDEX).all()  # first token of a sample unsupervised
    assert (labels[r, n:] == IGNORE_INDEX).all()
    sup = labels[r] != IGNORE_INDEX
    assert (labels[r][sup] == ids[r][sup]).all()
    if max_sup:
      assert int(sup[1:].sum()) <= max_sup
    ctx = ids[r] == ref.CTX
    assert (batch["pixel_values"][r][~ctx] == 0).all() and (batch["token_hw"][r][~ctx] == 0).all()


def _cfg(**kw):
  c = pipeline.default_data_config()
  for k, v in kw.items():
    c[k] = v
  return c


def test_embedded_mixture_batches_and_positions():
  it = pipeline.make_train_iterator(_cfg(), seq_len=512, batch_size=2, seed=0, max_supervised_tokens=64)
  for b in take(it, 6):
    _check_packed(b, max_sup=64)
    for r in range(2):  # t restarts at 0 per packed sample; visual tokens share t
      t, _, _ = ref.ref_thw(b["input_ids"][r], b["token_hw"][r], b["segment_ids"][r])
      starts = np.flatnonzero(np.diff(np.concatenate([[0], b["segment_ids"][r]])) != 0)
      assert (t[starts] == 0).all()
  st = it.stats()
  assert st["samples"] > 10 and not pipeline.skip_counts(it)


def test_resume_gives_the_uninterrupted_batches():
  cfg = _cfg(max_waiting=4)
  kw = dict(seq_len=384, batch_size=2, seed=3, max_supervised_tokens=40)
  full = take(pipeline.make_train_iterator(cfg, **kw), 9)
  it = pipeline.make_train_iterator(cfg, **kw)
  take(it, 4)
  state = json.loads(json.dumps(it.get_state()))  # states survive JSON (checkpoint format)
  assert "W" in state["log"] or state["log"] == ""
  it2 = pipeline.make_train_iterator(cfg, **kw)
  it2.set_state(state)
  assert_batches_equal(full[4:], take(it2, 5))


@pytest.mark.slow
def test_resume_with_two_workers():
  cfg = _cfg(num_workers=2, max_waiting=4)
  kw = dict(seq_len=384, batch_size=2, seed=3)
  full = take(pipeline.make_train_iterator(cfg, **kw), 7)
  it = pipeline.make_train_iterator(cfg, **kw)
  take(it, 3)
  state = it.get_state()
  it2 = pipeline.make_train_iterator(cfg, **kw)
  it2.set_state(state)
  assert_batches_equal(full[3:], take(it2, 4))
  assert_batches_equal(full, take(pipeline.make_train_iterator(_cfg(max_waiting=4), **kw), 7))


def _write_png(path, h, w, seed=0):
  Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)


def _good(i):
  return {"image": f"good{i % 3}.png", "conversations": [
      {"from": "human", "value": f"<image>\nQuestion {i}?"}, {"from": "gpt", "value": f"Answer {i}."}]}


def _bad_records(tmp_path):
  (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
  _write_png(tmp_path / "thin.png", 2, 402)
  Image.new("1", (17000, 17000)).save(tmp_path / "bomb.png")  # 289M pixels, tiny file
  qa = [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]
  return {
      "missing_file": {"image": "nope.png", "conversations": qa},
      "corrupt_file": {"image": "corrupt.png", "conversations": qa},
      "aspect_ratio": {"image": "thin.png", "conversations": qa},
      "decompression_bomb": {"image": "bomb.png", "conversations": qa},
      "image_tag_mismatch": {"image": ["good0.png"], "conversations": [
          {"from": "human", "value": "<image><image>\nQ?"}, {"from": "gpt", "value": "A."}]},
      "image_tag_mismatch_few": {"images": ["good0.png", "good1.png"], "conversations": qa},
      "empty_conversation": {"conversations": []},
      "no_supervised_token": {"conversations": [{"from": "human", "value": "Only a question."}]},
      "too_long": {"conversations": [{"from": "human", "value": "word " * 400}, {"from": "gpt", "value": "ok"}]},
  }


def _json_cfg(path, **kw):
  c = _cfg(shuffle=False, **kw)
  c.sources = {"mine": {"kind": "json", "weight": 1.0, "path": str(path), "data_root": "",
                        "options": {"min_pixels": 1024, "max_pixels": 4096}}}
  return c


def test_bad_inputs_are_counted_and_do_not_change_batches(tmp_path):
  for k in range(3):
    _write_png(tmp_path / f"good{k}.png", 40 + 20 * k, 70, seed=k)
  bad = _bad_records(tmp_path)
  goods = [_good(i) for i in range(60)]
  mixed = []
  for i, g in enumerate(goods):
    mixed.append(g)
    if i < len(bad):
      mixed.append(list(bad.values())[i])
  (tmp_path / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in goods))
  (tmp_path / "mixed.json").write_text(json.dumps(mixed))
  kw = dict(seq_len=256, batch_size=2, seed=0)
  # Two batches of 2 x 256 tokens hold ~30 samples of ~30 tokens (+16 waiting): within one epoch.
  clean_it = pipeline.make_train_iterator(_json_cfg(tmp_path / "good.jsonl"), **kw)
  clean = take(clean_it, 2)
  it = pipeline.make_train_iterator(_json_cfg(tmp_path / "mixed.json"), **kw)
  got = take(it, 2)
  assert_batches_equal(clean, got)
  for b in got:
    _check_packed(b)
  counts = pipeline.skip_counts(it)
  assert counts == {"missing_file": 1, "corrupt_file": 1, "aspect_ratio": 1, "decompression_bomb": 1,
                    "image_tag_mismatch": 2, "empty_conversation": 1, "no_supervised_token": 1,
                    "too_long": 1}, counts


@pytest.mark.parametrize("case", ["missing_file", "corrupt_file", "aspect_ratio", "decompression_bomb",
                                  "image_tag_mismatch", "image_tag_mismatch_few", "empty_conversation",
                                  "no_supervised_token"])
def test_strict_mode_names_the_record(tmp_path, case):
  _write_png(tmp_path / "good0.png", 40, 70)
  _write_png(tmp_path / "good1.png", 40, 70)
  rec = _bad_records(tmp_path)[case]
  (tmp_path / "a.jsonl").write_text(json.dumps(_good(0)) + "\n" + json.dumps(rec) + "\n")
  it = pipeline.make_train_iterator(_json_cfg(tmp_path / "a.jsonl", strict=True), seq_len=256, batch_size=1, seed=0)
  with pytest.raises(processor_lib.BadRecordError, match=r"record mine:1.*" + case.replace("_few", "")):
    take(it, 3)


def test_over_long_and_supervised_cap_dropped_not_cut():
  def sample(n, sup):
    ids = np.full(n, 5, np.int32)
    labels = np.full(n, IGNORE_INDEX, np.int32)
    labels[n - sup:] = 5
    return {"input_ids": ids, "labels": labels, "token_hw": np.zeros((n, 2), np.int32),
            "pixel_values": np.zeros((0, 4, 768), np.uint8), "num_supervised": sup, "record_id": str(n)}
  import grain
  items = [sample(10, 2), sample(40, 2), sample(8, 9), sample(12, 3), sample(20, 4)]
  ds = packing.PackIterDataset(grain.MapDataset.source(items).to_iter_dataset(),
                               packing.PackOptions(seq_len=32, batch_size=1, max_supervised_tokens=8))
  it = iter(ds)
  out = list(it)
  assert it.stats()["skip/too_long"] == 1 and it.stats()["skip/too_many_supervised"] == 1
  assert [b["segment_ids"][0].max() for b in out] == [2, 1]  # 10+12 then 20 (10+12+20 > 32)
  assert (out[0]["segment_ids"][0] > 0).sum() == 22


def test_best_fit_prefers_fullest_bin():
  import grain
  mk = lambda n: {"input_ids": np.ones(n, np.int32), "labels": np.r_[[-100], np.ones(n - 1)].astype(np.int32),
                  "token_hw": np.zeros((n, 2), np.int32), "pixel_values": np.zeros((0, 4, 768), np.uint8),
                  "num_supervised": n - 1}
  items = [mk(10), mk(25), mk(6)]
  for algo, expect in (("first_fit", [10 + 6, 25]), ("best_fit", [10, 25 + 6])):
    ds = packing.PackIterDataset(grain.MapDataset.source(items).to_iter_dataset(),
                                 packing.PackOptions(seq_len=32, batch_size=2, algorithm=algo))
    b = next(iter(ds))
    assert (b["segment_ids"] > 0).sum(1).tolist() == expect, algo


def test_embedded_tasks_and_eval_examples():
  cfg = _cfg()
  for task in embedded.TASKS:
    train = embedded.load_records(task, "train")
    held = embedded.load_records(task, "heldout")
    assert len(train) >= 1000 and len(held) >= 100
  ex = pipeline.make_eval_examples(cfg, task="digit", limit=50)
  assert len(ex) == 50
  tok = pipeline.get_tokenizer(cfg.tokenizer)
  for e in ex:
    assert e["task"] == "digit" and e["answer"] in "0123456789" and len(e["answer"]) == 1
    assert tok.decode(e["input_ids"]).endswith("<|im_start|>assistant\n")
    assert (e["input_ids"] == ref.CTX).sum() == 1 and e["pixel_values"].shape == (1, 4, 768)
    assert len(e["answer_ids"]) == 2  # one digit token + <|im_end|>
  # Every held-out task processes; answers are short.
  for task in embedded.TASKS:
    for e in pipeline.make_eval_examples(cfg, task=task, limit=20):
      assert 0 < len(e["answer"]) <= 12
  # Digit held-out drawings are disjoint from training drawings (split by original index).
  tr = {json.dumps(r["conversations"]) for r in embedded.load_records("text", "train")}
  he = {json.dumps(r["conversations"]) for r in embedded.load_records("text", "heldout")}
  assert not (tr & he)


def test_array_record_source_matches_json(tmp_path):
  from neo_jax.data import sources
  for k in range(3):
    _write_png(tmp_path / f"good{k}.png", 40, 70, seed=k)
  recs = [_good(i) for i in range(20)]
  (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
  sources.write_array_record(str(tmp_path / "a.array_record"), recs)
  kw = dict(seq_len=256, batch_size=2, seed=0)
  a = take(pipeline.make_train_iterator(_json_cfg(tmp_path / "a.jsonl"), **kw), 2)
  c = _json_cfg(tmp_path / "a.jsonl")
  c.sources.mine.kind = "array_record"
  c.sources.mine.path = str(tmp_path / "a.array_record")
  c.sources.mine.data_root = str(tmp_path)
  assert_batches_equal(a, take(pipeline.make_train_iterator(c, **kw), 2))
