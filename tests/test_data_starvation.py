"""A starving source stops the run with an error that says what to change
(data/source_stats.py), and skip warnings are rate-limited, never one per record."""

import json
import logging
import time

import ml_collections
import pytest

from neo_jax.data import pipeline
from neo_jax.data import source_stats
from neo_jax.data.errors import SourceStarvedError


def _conv(q, a="ok"):
  return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def _cfg(tmp_path, sources):
  c = pipeline.default_data_config()
  srcs = {}
  for name, recs in sources.items():
    ann = tmp_path / f"{name}.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in recs))
    srcs[name] = {"kind": "json", "path": str(ann), "weight": 1.0, "data_root": "", "options": {}}
  c.sources = ml_collections.ConfigDict(srcs)
  return c


def test_a_source_whose_every_record_is_too_long_stops_the_run(tmp_path):
  cfg = _cfg(tmp_path, {"long_text": [{"conversations": _conv("word " * 400)}] * 5,
                        "fine": [{"conversations": _conv(f"q{i}")} for i in range(50)]})
  cfg.starve_records = 40
  it = pipeline.make_train_iterator(cfg, seq_len=128, batch_size=2, seed=0)
  t0 = time.perf_counter()
  with pytest.raises(SourceStarvedError) as e:
    for _ in range(1000):
      next(it)
  assert time.perf_counter() - t0 < 30
  msg = str(e.value)
  assert e.value.source == "long_text" and e.value.reason == "too_long"
  assert "'long_text'" in msg and "last 40 records" in msg and "long_text:" in msg  # a record id
  assert "seq_len" in msg and "max_sample_tokens" in msg and "data.starve_records=0" in msg


def test_only_source_starving_with_workers(tmp_path):
  cfg = _cfg(tmp_path, {"missing": [{"image": f"nope{i}.jpg", "conversations": _conv("<image>\nq")}
                                    for i in range(10)]})
  cfg.starve_records, cfg.num_workers = 25, 1
  it = pipeline.make_train_iterator(cfg, seq_len=256, batch_size=1, seed=0)
  with pytest.raises(SourceStarvedError, match="missing_file.*data_path"):
    next(it)


def test_skip_rate_threshold(tmp_path):
  bad = {"image": "nope.jpg", "conversations": _conv("<image>\nq")}
  good = {"conversations": _conv("q")}
  cfg = _cfg(tmp_path, {"mostly_bad": [bad] * 19 + [good]})
  cfg.starve_records, cfg.max_skip_rate, cfg.skip_rate_window, cfg.shuffle = 0, 0.9, 100, False
  it = pipeline.make_train_iterator(cfg, seq_len=64, batch_size=1, seed=0)
  with pytest.raises(SourceStarvedError, match=r"skipped 95% of its last 100 records"):
    for _ in range(200):
      next(it)
  # Off: the same source keeps training.
  cfg.max_skip_rate = 1.0
  it = pipeline.make_train_iterator(cfg, seq_len=64, batch_size=1, seed=0)
  for _ in range(10):
    next(it)


def test_skip_warnings_are_rate_limited(caplog):
  mon = source_stats.SourceMonitor(source_stats.MonitorOptions(
      starve_records=0, max_skip_rate=1.0, log_first=3, log_interval_s=3600))
  with caplog.at_level(logging.WARNING, logger="neo_jax.data"):
    for i in range(1000):
      mon.skipped("s", "missing_file", f"s:{i}", f"/x/{i}.jpg")
    mon.kept("s", 10, 0)
    mon.flush_logs()
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 4
  assert lines[0].startswith("Skipped record s:0") and "s:2" in lines[2]
  assert "997 more records of source s (missing_file)" in lines[3]
  c = mon.counts()
  assert c["s/records"] == 1001 and c["s/skip/missing_file"] == 1000 and c["s/kept"] == 1
