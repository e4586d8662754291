"""``core.batch.prompt_batch``: the one builder of prompt batches (decoder, oracle,
scoring), checked position by position against the prompts themselves."""

from __future__ import annotations

import numpy as np
import pytest

from neo_jax.core import batch as batch_lib
from neo_jax.core import geometry

CTX = 7  # an <IMG_CONTEXT> id for the test


def _prompt(n: int, ctx_at: tuple[int, ...], seed: int) -> dict:
  rng = np.random.default_rng(seed)
  ids = rng.integers(100, 200, n).astype(np.int32)
  ids[list(ctx_at)] = CTX
  hw = np.zeros((n, 2), np.int32)
  hw[list(ctx_at)] = np.stack([np.arange(len(ctx_at)) // 2, np.arange(len(ctx_at)) % 2], 1)
  pix = rng.integers(0, 256, (len(ctx_at),) + geometry.token_pixels_shape(16)).astype(np.uint8)
  return {"input_ids": ids, "token_hw": hw, "pixel_values": pix}


@pytest.mark.parametrize("pad_segment", [0, 1])
def test_rows_are_the_prompts_then_padding(pad_segment):
  prompts = [_prompt(5, (1, 2), 0), _prompt(9, (), 1), _prompt(3, (0,), 2)]
  batch, lengths = batch_lib.prompt_batch(prompts, 12, img_context_id=CTX,
                                          pad_segment=pad_segment)
  assert "labels" not in batch
  np.testing.assert_array_equal(lengths, [5, 9, 3])
  assert batch["input_ids"].shape == (3, 12)
  for r, p in enumerate(prompts):
    n = len(p["input_ids"])
    np.testing.assert_array_equal(batch["input_ids"][r, :n], p["input_ids"])
    np.testing.assert_array_equal(batch["input_ids"][r, n:], 0)
    np.testing.assert_array_equal(batch["segment_ids"][r, :n], 1)
    np.testing.assert_array_equal(batch["segment_ids"][r, n:], pad_segment)
    np.testing.assert_array_equal(batch["token_hw"][r, :n], p["token_hw"])
    ctx = np.flatnonzero(p["input_ids"] == CTX)
    np.testing.assert_array_equal(batch["pixel_values"][r, ctx], p["pixel_values"])
    others = np.setdiff1d(np.arange(12), ctx)
    assert not batch["pixel_values"][r, others].any()


def test_errors_name_the_prompt():
  with pytest.raises(ValueError, match="Prompt 1 has 9 tokens"):
    batch_lib.prompt_batch([_prompt(5, (), 0), _prompt(9, (), 1)], 8, img_context_id=CTX)
  bad = _prompt(5, (1, 2), 0)
  bad["pixel_values"] = bad["pixel_values"][:1]
  with pytest.raises(ValueError, match="2 <IMG_CONTEXT> tokens for 1 visual"):
    batch_lib.prompt_batch([bad], 8, img_context_id=CTX)
  with pytest.raises(ValueError, match="pad_segment"):
    batch_lib.prompt_batch([bad], 8, img_context_id=CTX, pad_segment=2)


def test_padded_length_geometric_buckets():
  # The rule by hand: 16 below 256 tokens, then 1/8 of the octave's power of two.
  assert [batch_lib.padded_length(n) for n in (1, 16, 17, 102, 255, 256, 257, 1000, 1025)] \
      == [16, 16, 32, 112, 256, 256, 288, 1024, 1152]
  lengths = {n: batch_lib.padded_length(n) for n in range(1, 9000)}
  for n, p in lengths.items():
    assert p >= n and p % 16 == 0
    assert p - n < 16 or (p - n) * 8 < n          # at most 1/8 of a row is padding
  for k in range(7, 13):                          # eight programs per octave
    assert len({p for n, p in lengths.items() if 2 ** k < n <= 2 ** (k + 1)}) == 8
  assert batch_lib.padded_length(102, 64) == 128 and batch_lib.padded_length(128, 64) == 128
  with pytest.raises(ValueError, match="n >= 1"):
    batch_lib.padded_length(0)
  with pytest.raises(ValueError, match="bucket >= 1"):
    batch_lib.padded_length(5, 0)
