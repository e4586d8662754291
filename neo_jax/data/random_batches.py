"""Random packed batches in the model's layout, as a checkpointable Grain pipeline.

For smoke tests, benchmarks and AOT planning: no files, deterministic in
(seed, step), the same iterator interface (``get_state`` / ``set_state``) as
the real pipeline. Each sequence holds a few samples of text and small images.
"""

from __future__ import annotations

import grain
import numpy as np

from neo_jax.model.inputs import IGNORE_INDEX


def make_random_batch(rng: np.random.Generator, *, batch_size: int, seq_len: int,
                      vocab_size: int, img_start_id: int, img_context_id: int,
                      img_end_id: int, patch_size: int = 16, max_image_grid: int = 4) -> dict:
  """One packed batch following ``neo_jax.model.inputs``.

  Each sequence: 1-3 samples, each ``text [image] text answer``; images of
  random token grids up to ``max_image_grid`` a side; answers supervised;
  padding fills the rest. Regular tokens are drawn below ``min(special ids)``.
  """
  special = min(img_start_id, img_context_id, img_end_id, vocab_size)
  pp = 3 * patch_size * patch_size
  out = {
      "input_ids": np.zeros((batch_size, seq_len), np.int32),
      "labels": np.full((batch_size, seq_len), IGNORE_INDEX, np.int32),
      "segment_ids": np.zeros((batch_size, seq_len), np.int32),
      "token_hw": np.zeros((batch_size, seq_len, 2), np.int32),
      "pixel_values": np.zeros((batch_size, seq_len, 4, pp), np.uint8),
  }
  for b in range(batch_size):
    pos, seg = 0, 0
    for _ in range(rng.integers(1, 4)):
      ids, lab, hw = [], [], []
      n_prompt = int(rng.integers(2, 8))
      ids += list(rng.integers(0, special, n_prompt)); lab += [IGNORE_INDEX] * n_prompt
      hw += [(0, 0)] * n_prompt
      if rng.random() < 0.7:
        gh, gw = rng.integers(1, max_image_grid + 1, 2)
        ids += [img_start_id] + [img_context_id] * int(gh * gw) + [img_end_id]
        lab += [IGNORE_INDEX] * int(gh * gw + 2)
        hw += [(0, 0)] + [(r, c) for r in range(gh) for c in range(gw)] + [(0, 0)]
      n_ans = int(rng.integers(1, 5))
      ans = list(rng.integers(0, special, n_ans))
      ids += ans; lab += ans; hw += [(0, 0)] * n_ans
      n = len(ids)
      if pos + n > seq_len:
        break
      seg += 1
      sl = slice(pos, pos + n)
      out["input_ids"][b, sl] = ids
      out["labels"][b, sl] = lab
      out["segment_ids"][b, sl] = seg
      out["token_hw"][b, sl] = hw
      ctx = out["input_ids"][b, sl] == img_context_id
      out["pixel_values"][b, sl][ctx] = rng.integers(0, 256, (int(ctx.sum()), 4, pp), dtype=np.uint8)
      pos += n
  return out


def make_random_iterator(*, batch_size: int, seq_len: int, vocab_size: int, img_start_id: int,
                         img_context_id: int, img_end_id: int, seed: int = 0,
                         process_index: int = 0, num_batches: int = 1 << 30):
  """A checkpointable Grain iterator of ``make_random_batch`` batches (per process)."""

  def make(i):
    rng = np.random.default_rng([seed, process_index, int(i)])
    return make_random_batch(rng, batch_size=batch_size, seq_len=seq_len, vocab_size=vocab_size,
                             img_start_id=img_start_id, img_context_id=img_context_id,
                             img_end_id=img_end_id)

  return iter(grain.MapDataset.range(num_batches).map(make).to_iter_dataset())
