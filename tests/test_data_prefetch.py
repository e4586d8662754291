"""Memory bounded in bytes: the read-ahead (data/prefetch.py) and the packer's waiting
samples hold at most their budget (plus one element) on a slow consumer, and both
resume exactly."""

import time

import grain
import numpy as np

from testlib.data import assert_batches_equal, take
from neo_jax.data import packing
from neo_jax.data import prefetch
from neo_jax.core import tokens

MIB = 1 << 20


def _element(i):
  """Sample-like dicts of very different sizes: text (tiny) to video (up to 6 MiB)."""
  rng = np.random.default_rng(i)
  n_vis = int(rng.choice([0, 0, 16, 2048]))
  n = n_vis + 20
  ids = np.full(n, 7, np.int32)
  ids[10:10 + n_vis] = tokens.IMG_CONTEXT_TOKEN_ID
  labels = np.full(n, -100, np.int32)
  labels[-5:] = 7
  return {"input_ids": ids, "labels": labels, "token_hw": np.zeros((n, 2), np.int32),
          "pixel_values": np.full((n_vis, 4, 768), i % 251, np.uint8), "num_supervised": 4,
          "record_id": f"r:{i}", "source": "s"}


def _source():
  return grain.MapDataset.range(10_000).map(_element).to_iter_dataset()


def test_read_ahead_holds_at_most_its_budget_on_a_slow_consumer():
  budget = 8 * MIB
  it = iter(prefetch.BytePrefetchIterDataset(_source(), budget))
  largest = 0
  for _ in range(40):
    el = next(it)
    largest = max(largest, prefetch.nbytes(el))
    time.sleep(0.01)   # the producer fills the budget meanwhile
    assert it.held_bytes <= budget + largest
  assert largest > 6 * MIB and it.peak_bytes >= budget - largest   # it did read ahead
  assert it.peak_bytes <= budget + largest
  it.close()


def test_read_ahead_resumes_exactly():
  ds = prefetch.BytePrefetchIterDataset(_source(), 4 * MIB)
  full = take(iter(ds), 30)
  it = iter(ds)
  take(it, 11)
  state = it.get_state()
  it2 = iter(ds)
  it2.set_state(state)
  rest = take(it2, 19)
  for a, b in zip(full[11:], rest):
    assert a["record_id"] == b["record_id"]
    np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"])


def test_read_ahead_passes_errors_in_order():
  def bad(i):
    if i == 5:
      raise RuntimeError("boom at 5")
    return {"x": np.zeros(3)}
  it = iter(prefetch.BytePrefetchIterDataset(
      grain.MapDataset.range(10).map(bad).to_iter_dataset(), MIB))
  assert len(take(it, 5)) == 5
  try:
    next(it)
    raise AssertionError("no error")
  except RuntimeError as e:
    assert "boom at 5" in str(e)


def _packer(max_waiting_bytes, max_waiting=10_000):
  opts = packing.PackOptions(seq_len=2100, batch_size=1, max_waiting=max_waiting,
                             max_waiting_bytes=max_waiting_bytes)
  return packing.PackIterDataset(_source(), opts)


def test_packer_waiting_bytes_bounded_and_resume_exact():
  budget = 10 * MIB
  it = iter(_packer(budget))
  for _ in range(30):
    next(it)
    held = sum(prefetch.nbytes(w[2]) for w in it._waiting)  # pylint: disable=protected-access
    assert held <= budget + 7 * MIB
  # Bounded by count only (100 samples): the same stream holds far more.
  it_count = iter(_packer(0, max_waiting=100))
  next(it_count)
  assert sum(prefetch.nbytes(w[2]) for w in it_count._waiting) > 50 * MIB  # pylint: disable=protected-access
  full = take(iter(_packer(budget)), 16)
  it = iter(_packer(budget))
  take(it, 7)
  it2 = iter(_packer(budget))
  it2.set_state(it.get_state())
  assert_batches_equal(full[7:], take(it2, 9))


def test_close_releases_a_waiting_consumer():
  import threading  # pylint: disable=import-outside-toplevel

  def slow(i):
    time.sleep(0.5 if i else 0)
    return {"x": np.zeros(10)}
  it = iter(prefetch.BytePrefetchIterDataset(
      grain.MapDataset.range(100).map(slow).to_iter_dataset(), MIB))
  next(it)
  got = []
  t = threading.Thread(target=lambda: got.append(list(it)))   # waits on the slow element
  t.start()
  time.sleep(0.05)
  it.close()
  t.join(5)
  assert not t.is_alive() and it.held_bytes == 0
