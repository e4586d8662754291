"""Data mixtures from the command line: a mixture file of release-registry sources trains
the smoke model; the released-size recipes refuse to start without one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from neo_jax.configs import smoke
from neo_jax.data import mixture
from neo_jax.data.tokenizer import get_tokenizer
from neo_jax.train import input_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_IDS = ["--config.model.vocab_size=151936", "--config.model.img_context_token_id=151669",
            "--config.model.img_start_token_id=151670", "--config.model.img_end_token_id=151671"]


def _env():
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
              XLA_FLAGS="--xla_force_host_platform_device_count=1")


def _jsonl(path, word, n):
  with open(path, "w") as f:
    for i in range(n):
      f.write(json.dumps({"conversations": [{"from": "human", "value": f"Say {word} {i}."},
                                            {"from": "gpt", "value": f"{word} {i}"}]}) + "\n")


def _mix(tmp_path):
  """A JSONL source (text) and a Parquet source (images as bytes), own weights / options."""
  _jsonl(tmp_path / "a.jsonl", "alpha", 10)
  _parquet(tmp_path / "b.parquet", [{"conversations": _conv("bravo", i), "image": _png_bytes(i)}
                                    for i in range(10)])
  mix = tmp_path / "mix.yaml"
  mix.write_text(f"""sources:
  first:
    annotation_path: {tmp_path / 'a.jsonl'}
    data_path: {tmp_path}
    weight: 1
  second:
    kind: parquet
    annotation_path: {tmp_path / 'b.parquet'}
    sampling_rate: 0.5
    weight: 2
    options: {{max_pixels: 4096, min_pixels: 1024}}
""")
  return mix


def test_recipe_without_a_mixture_refuses_to_start(tmp_path):
  r = subprocess.run([sys.executable, "-m", "neo_jax.train",
                      "--config=neo_ov_2b:stage2",
                      f"--workdir={tmp_path / 'x'}"], env=_env(), cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode != 0
  assert "no data mixture was given" in r.stderr and "data=mix.yaml" in r.stderr


def test_mixture_file_on_the_command_line_trains_and_mixes_both_sources(tmp_path):
  mix = _mix(tmp_path)
  r = subprocess.run([sys.executable, "-m", "neo_jax.train",
                      "--config=smoke:steps=2,seq_len=256,batch_size=2",
                      f"--workdir={tmp_path / 'run'}", "--config.data.kind=pipeline",
                      f"--config.data.mixture={mix}", *REAL_IDS], env=_env(), cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "[train] step 2 " in r.stdout
  # The same config in-process: the packed batches hold samples of both sources, and the
  # sampled source contributes only its kept half.
  c = smoke.get_config("seq_len=256,batch_size=2")
  c.data.kind, c.data.mixture = "pipeline", str(mix)
  c.model.vocab_size = 151936
  it = input_pipeline.make_data_iterator(c)
  tok = get_tokenizer("embedded")
  text = " ".join(tok.decode([int(t) for t in b["input_ids"][b["segment_ids"] > 0]])
                  for b in (next(it) for _ in range(6)))
  assert "alpha" in text and "bravo" in text
  bravo = {int(w) for w in text.split("bravo ")[1:] for w in [w.split(".")[0].split()[0]]
           if w.isdigit()}
  assert 0 < len(bravo) <= 5, bravo


def test_malformed_mixtures_say_what_to_fix(tmp_path):
  bad = tmp_path / "bad.yaml"
  bad.write_text("sources:\n  x:\n    annotation_path: a.jsonl\n    colour: red\n")
  with pytest.raises(ValueError, match="unknown fields.*colour"):
    mixture.read_mixture(str(bad))
  bad.write_text("sources:\n  x:\n    annotation_path: a.jsonl\n    sampling_rate: 1.5\n")
  with pytest.raises(ValueError, match="sampling_rate"):
    mixture.read_mixture(str(bad))
  bad.write_text("- a\n- b\n")
  with pytest.raises(ValueError, match="'sources:'"):
    mixture.read_mixture(str(bad))
  with pytest.raises(FileNotFoundError):
    mixture.read_mixture(str(tmp_path / "missing.yaml"))
  got = mixture.read_mixture(str(_mix(tmp_path)))
  assert got["second"]["path"].endswith("b.parquet") and got["first"]["data_root"] == str(tmp_path)
  assert got["second"]["sampling_rate"] == 0.5 and got["first"]["kind"] == "json"
  assert got["second"]["kind"] == "parquet" and got["second"]["weight"] == 2


def _png_bytes(seed, h=64, w=64):
  import io  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  buf = io.BytesIO()
  img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
  Image.fromarray(img).save(buf, format="PNG")
  return buf.getvalue()


def _parquet(path, rows, row_group_size=2):
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  table = pa.table({"conversations": [r["conversations"] for r in rows],
                    "image": [r.get("image") for r in rows]})
  pq.write_table(table, path, row_group_size=row_group_size)


def _conv(word, i, image=True):
  q = ("<image>\n" if image else "") + f"Say {word} {i}."
  return json.dumps([{"from": "human", "value": q}, {"from": "gpt", "value": f"{word} {i}"}])


def test_jsonl_and_parquet_mixture_with_broken_inputs_counts_skips(tmp_path):
  import pickle  # pylint: disable=import-outside-toplevel
  from neo_jax.data import pipeline, processor as processor_lib  # pylint: disable=import-outside-toplevel
  from neo_jax.data.parquet_source import ParquetSource  # pylint: disable=import-outside-toplevel
  rows = [{"conversations": _conv("charlie", i), "image": _png_bytes(i)} for i in range(6)]
  rows += [{"conversations": "{not json", "image": _png_bytes(9)},          # bad_json
           {"conversations": _conv("charlie", 7), "image": b"not an image"},  # corrupt_file
           {"conversations": _conv("charlie", 8, image=False), "image": None}]
  _parquet(tmp_path / "c.parquet", rows)
  src = ParquetSource(str(tmp_path / "c.parquet"))
  assert len(src) == 9 and pickle.loads(pickle.dumps(src))[8]["conversations"][1]["value"] == (
      "charlie 8")
  lines = [_conv("alpha", i, image=False) for i in range(8)]
  (tmp_path / "a.jsonl").write_text(
      "".join(json.dumps({"conversations": json.loads(l)}) + "\n" for l in lines)
      + "{not json\n[1, 2]\n")
  (tmp_path / "mix.yaml").write_text(f"""sources:
  words:
    annotation_path: {tmp_path / 'a.jsonl'}
  pictures:
    kind: parquet
    annotation_path: {tmp_path / 'c.parquet'}
    options: {{max_pixels: 4096, min_pixels: 1024}}
""")
  c = smoke.get_config("seq_len=256,batch_size=2")
  c.data.kind, c.data.mixture, c.data.shuffle = "pipeline", str(tmp_path / "mix.yaml"), False
  it = input_pipeline.make_data_iterator(c)
  tok = get_tokenizer("embedded")
  batches = [next(it) for _ in range(8)]
  text = " ".join(tok.decode([int(t) for t in b["input_ids"][b["segment_ids"] > 0]])
                  for b in batches)
  assert "alpha" in text and "charlie" in text
  assert any((b["input_ids"] == 151669).any() for b in batches)   # images from bytes
  counts = pipeline.skip_counts(it)
  assert counts.get("bad_json", 0) >= 2 and counts.get("corrupt_file", 0) >= 1, counts
  assert counts.get("bad_record", 0) >= 1, counts
  # Strict mode names the file and the row.
  c.data.strict = True
  with pytest.raises(processor_lib.BadRecordError, match=r"c\.parquet row 6"):
    strict = input_pipeline.make_data_iterator(c)
    for _ in range(20):
      next(strict)


def test_every_kept_record_is_read_once_across_hosts(tmp_path):
  """2 hosts, a JSONL source sampled at 0.5 and a Parquet source: the hosts' records are
  disjoint and together they are the epoch's records, each exactly once."""
  from neo_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  _jsonl(tmp_path / "a.jsonl", "alpha", 11)
  _parquet(tmp_path / "c.parquet", [{"conversations": _conv("charlie", i, image=False)}
                                    for i in range(7)], row_group_size=3)
  (tmp_path / "mix.yaml").write_text(f"""sources:
  a: {{annotation_path: {tmp_path / 'a.jsonl'}, sampling_rate: 0.5}}
  c: {{annotation_path: {tmp_path / 'c.parquet'}, kind: parquet}}
""")
  c = smoke.get_config()
  c.data.kind, c.data.mixture = "pipeline", str(tmp_path / "mix.yaml")
  data = input_pipeline.data_config(c)
  for i, name in enumerate(sorted(data.sources)):
    per_host = [[rec["_id"] for rec in pipeline.host_records(
        data, name, seed=0, source_index=i, process_index=p, process_count=2)]
        for p in range(2)]
    every = [rec["_id"] for rec in pipeline.host_records(data, name, seed=0, source_index=i)]
    assert not set(per_host[0]) & set(per_host[1])
    assert sorted(per_host[0] + per_host[1]) == sorted(every)
    assert len(every) == {"a": 5, "c": 7}[name] == len(set(every))
    if name == "c":  # Parquet: by row group (rows 0-2, 3-5, 6): host 0 groups 0, 2
      assert [int(r.split(":")[1]) for r in per_host[0]] == [0, 1, 2, 6], per_host[0]


def test_jsonl_source_indexes_lines_without_keeping_them(tmp_path):
  from neo_jax.data import sources  # pylint: disable=import-outside-toplevel
  path = tmp_path / "x.jsonl"
  path.write_bytes(b'{"a": 1}\n\n{"a": 2}\r\n{bad\n[1, 2]\n{"a": 3}')
  src = sources.JsonLinesSource(str(path))
  assert src._items is None   # pylint: disable=protected-access
  got = [src[i] for i in range(len(src))]
  assert got[0] == {"a": 1} and got[1] == {"a": 2} and got[3] == [1, 2] and got[4] == {"a": 3}
  assert got[2]["_error"][0] == "bad_json"
  for chunk in (1, 3, 1 << 20):   # line ranges do not depend on the read size
    s, e = sources._line_ranges(str(path), chunk)   # pylint: disable=protected-access
    assert s.tolist() == [0, 10, 20, 25, 32] and e.tolist() == [8, 19, 24, 31, 40]


def test_recipes_state_stage_defaults_and_modality_weights(tmp_path):
  """NEO-ov stage 2: pixels 256^2..4096^2, 128 frames, and sources that name a modality
  but no weight get 2 : 4 : 1 : 1 split over the sources of each modality."""
  from neo_jax.configs import neo_ov_2b, neo_2b  # pylint: disable=import-outside-toplevel
  for i, m in enumerate(("text", "image", "image", "video")):
    _jsonl(tmp_path / f"{i}.jsonl", m, 3)
  (tmp_path / "mix.yaml").write_text("sources:\n" + "".join(
      f"  s{i}: {{annotation_path: {tmp_path / f'{i}.jsonl'}, modality: {m}}}\n"
      for i, m in enumerate(("text", "image", "image", "video"))) +
      f"  extra: {{annotation_path: {tmp_path / '0.jsonl'}, modality: video, weight: 3}}\n")
  c = neo_ov_2b.get_config(f"stage2,data={tmp_path / 'mix.yaml'}")
  assert (c.data.options.min_pixels, c.data.options.max_pixels) == (65536, 16777216)
  assert c.data.options.max_frames == 128 and c.model.rope_theta_vision == 1000.0
  weights = {k: v.weight for k, v in input_pipeline.data_config(c).sources.items()}
  assert weights == {"s0": 2.0, "s1": 2.0, "s2": 2.0, "s3": 1.0, "extra": 3.0}
  c1 = neo_2b.get_config(f"stage1,data={tmp_path / 'mix.yaml'}")
  assert c1.data.options.max_pixels == 4194304
  assert {k: v.weight for k, v in input_pipeline.data_config(c1).sources.items()} == {
      "s0": 1.0, "s1": 1.0, "s2": 1.0, "s3": 1.0, "extra": 3.0}


def test_parquet_source_reads_from_many_threads(tmp_path):
  """grain's prefetch threads share one source: concurrent reads of different row groups
  must give each thread its own rows (an unguarded shared file handle interleaved their
  seeks and crashed pyarrow)."""
  from concurrent import futures  # pylint: disable=import-outside-toplevel
  from neo_jax.data.parquet_source import ParquetSource  # pylint: disable=import-outside-toplevel
  n = 400
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  rows = [{"conversations": _conv("delta", i, image=False), "blob": bytes([i % 251]) * 4000}
          for i in range(n)]
  pq.write_table(pa.table({k: [r[k] for r in rows] for k in rows[0]}),
                 tmp_path / "d.parquet", row_group_size=3)
  src = ParquetSource(str(tmp_path / "d.parquet"))
  order = np.random.default_rng(0).permutation(np.repeat(np.arange(n), 5))
  with futures.ThreadPoolExecutor(16) as pool:
    got = list(pool.map(lambda i: (i, src[int(i)]), order))
  for i, rec in got:
    assert "_error" not in rec, rec["_error"]
    assert rec["conversations"] == json.loads(rows[i]["conversations"]), i
    assert rec["blob"] == rows[i]["blob"], i
