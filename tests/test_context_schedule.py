"""The context-length schedule (core/context_schedule.py): phases by step, and the input
pipeline repacking at a new length from the old state exactly as a resume does."""

import ml_collections
import numpy as np
import pytest

from testlib.data import assert_batches_equal, take
from neo_jax.core import context_schedule
from neo_jax.train import input_pipeline
from neo_jax.configs import demo


def _cfg(schedule, seq_len):
  return ml_collections.ConfigDict({"seq_len": seq_len, "seq_len_schedule": schedule})


def test_phases_and_phase_at():
  c = _cfg([[0, 256], [10, 384], [25, 512]], 512)
  ps = context_schedule.phases(c)
  assert [(p.start, p.seq_len) for p in ps] == [(0, 256), (10, 384), (25, 512)]
  got = [context_schedule.phase_at(c, s).seq_len for s in (0, 9, 10, 24, 25, 10_000)]
  assert got == [256, 256, 384, 384, 512, 512]
  assert context_schedule.phases(_cfg([], 512)) == [context_schedule.Phase(0, 0, 512)]
  c = _cfg([[0, 256], [0.4, 384], [0.7, 512]], 512)
  c.train = ml_collections.ConfigDict({"num_steps": 1000})
  assert [p.start for p in context_schedule.phases(c)] == [0, 400, 700]


@pytest.mark.parametrize("bad,match", [([[5, 256], [10, 512]], "start at 0"),
                                       ([[0, 256], [0, 512]], "increase"),
                                       ([[0, 256], [10, 384]], "set seq_len"),
                                       ([[0, -1], [10, 512]], "> 0"),
                                       ([[0]], "pair")])
def test_bad_schedules_are_named(bad, match):
  with pytest.raises(ValueError, match=match):
    context_schedule.phases(_cfg(bad, 512))


def test_pipeline_switch_equals_a_resume_at_the_boundary_and_inside_the_phase():
  c = demo.get_config("seq_len=256,batch_size=2")
  c.data.max_waiting = 4
  it = input_pipeline.make_data_iterator(c, 256)
  first = take(it, 5)
  it = input_pipeline.switch_seq_len(it, c, 384)
  second = take(it, 7)
  assert all(b["input_ids"].shape == (2, 256) for b in first)
  assert all(b["input_ids"].shape == (2, 384) for b in second)
  # A run resumed at the boundary (the state after 5 batches of 256) ...
  r = input_pipeline.make_data_iterator(c, 256)
  take(r, 5)
  state = r.get_state()
  r2 = input_pipeline.make_data_iterator(c, 384)
  r2.set_state(state)
  assert_batches_equal(second, take(r2, 7))
  # ... and one resumed 3 batches into the second phase.
  r3 = input_pipeline.make_data_iterator(c, 256)
  take(r3, 5)
  r3 = input_pipeline.switch_seq_len(r3, c, 384)
  take(r3, 3)
  r4 = input_pipeline.make_data_iterator(c, 384)
  r4.set_state(r3.get_state())
  assert_batches_equal(second[3:], take(r4, 4))
  tokens = [int((b["segment_ids"] > 0).sum()) for b in first + second]
  assert np.mean(tokens[5:]) > np.mean(tokens[:5])   # longer rows hold more


def _smoke(workdir_steps=8):
  from neo_jax.configs import smoke  # pylint: disable=import-outside-toplevel
  c = smoke.get_config(f"steps={workdir_steps},seq_len=128,batch_size=8")
  c.seq_len_schedule = ((0, 64), (4, 128))
  c.checkpoint.every_steps = 2
  c.checkpoint.keep = 10
  c.checkpoint.async_save = False
  return c


def _losses(workdir):
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  out = {}
  for line in open(os.path.join(workdir, "metrics.jsonl")):
    r = json.loads(line)
    if r["kind"] == "train":
      out[r["step"]] = r["loss"]
  return out


@pytest.mark.slow  # over a minute on 2 cores: `bash scripts/test.sh -m slow`
def test_trainer_switches_phase_and_resumes_before_and_after_the_switch(tmp_path, capsys):
  """Smoke model, 64-token rows for steps 1-4, 128 from step 5: a resume from step 2 (before
  the switch) and from step 6 (after it) give the uninterrupted run's losses bit for bit."""
  import os  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  from neo_jax.train import trainer  # pylint: disable=import-outside-toplevel
  full = str(tmp_path / "full")
  trainer.run(_smoke(), full)
  out = capsys.readouterr().out
  assert "Context schedule: 64 tokens from step 0, 128 tokens from step 4" in out
  assert "Compiling the train step for 64-token rows" in out
  assert "Context phase: 128 tokens per row from here." in out
  ref = _losses(full)
  assert sorted(ref) == list(range(1, 9))
  for resume_at in (2, 6):
    d = str(tmp_path / f"from{resume_at}")
    shutil.copytree(full, d)
    os.remove(os.path.join(d, "metrics.jsonl"))
    c = _smoke()
    c.checkpoint.restore_step = resume_at
    trainer.run(c, d)
    got = _losses(d)
    assert sorted(got) == list(range(resume_at + 1, 9))
    for step, loss in got.items():
      assert loss == ref[step], (resume_at, step, loss, ref[step])
