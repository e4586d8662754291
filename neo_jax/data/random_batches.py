"""Random packed batches in the model's layout, as a checkpointable Grain pipeline.

For smoke tests, benchmarks and AOT planning: no files, deterministic in
(seed, step), the same iterator interface (``get_state`` / ``set_state``) as
the real pipeline. Each sequence holds a few samples of text and small images.
"""

from __future__ import annotations

import grain
import numpy as np

from neo_jax.core import batch as batch_lib
from neo_jax.core import geometry
from neo_jax.core.tokens import IGNORE_INDEX


def _random_sample(rng: np.random.Generator, *, text_hi: int, img_start_id: int,
                   img_context_id: int, img_end_id: int,
                   token_pixels: tuple[int, int], max_image_grid: int) -> dict:
  """``text [image] text answer`` with the answer supervised (per-sample dict)."""
  ids, lab, hw = [], [], []
  n_prompt = int(rng.integers(2, 8))
  ids += list(rng.integers(0, text_hi, n_prompt))
  lab += [IGNORE_INDEX] * n_prompt
  hw += [(0, 0)] * n_prompt
  n_ctx = 0
  if rng.random() < 0.7:
    gh, gw = (int(x) for x in rng.integers(1, max_image_grid + 1, 2))
    n_ctx = gh * gw
    ids += [img_start_id] + [img_context_id] * n_ctx + [img_end_id]
    lab += [IGNORE_INDEX] * (n_ctx + 2)
    hw += [(0, 0)] + [(r, c) for r in range(gh) for c in range(gw)] + [(0, 0)]
  n_ans = int(rng.integers(1, 5))
  ans = list(rng.integers(0, text_hi, n_ans))
  ids += ans
  lab += ans
  hw += [(0, 0)] * n_ans
  pixels = rng.integers(0, 256, (n_ctx,) + token_pixels, dtype=np.uint8)
  return {"input_ids": np.asarray(ids, np.int32), "labels": np.asarray(lab, np.int32),
          "token_hw": np.asarray(hw, np.int32).reshape(-1, 2), "pixel_values": pixels}


def make_random_batch(rng: np.random.Generator, *, batch_size: int, seq_len: int,
                      vocab_size: int, img_start_id: int, img_context_id: int,
                      img_end_id: int, patch_size: int = geometry.PATCH_SIZE,
                      max_image_grid: int = 4) -> dict:
  """One packed batch following ``neo_jax.core.batch``.

  Each sequence: 1-3 samples, each ``text [image] text answer``; images of
  random token grids up to ``max_image_grid`` a side; answers supervised;
  padding (id 0) fills the rest. Regular tokens are drawn below
  ``min(special ids)``. A sample that would overflow the row ends the row.

  Returns:
    The batch dict (numpy arrays, ``[batch_size, seq_len, ...]``).
  """
  text_hi = min(img_start_id, img_context_id, img_end_id, vocab_size)
  token_pixels = geometry.token_pixels_shape(patch_size)
  rows = []
  for _ in range(batch_size):
    row, used = [], 0
    for _ in range(rng.integers(1, 4)):
      el = _random_sample(rng, text_hi=text_hi, img_start_id=img_start_id,
                          img_context_id=img_context_id, img_end_id=img_end_id,
                          token_pixels=token_pixels, max_image_grid=max_image_grid)
      if used + len(el["input_ids"]) > seq_len:
        break
      row.append(el)
      used += len(el["input_ids"])
    rows.append(row)
  return batch_lib.assemble_batch(rows, seq_len, pad_id=0, img_context_id=img_context_id,
                                  patch_size=patch_size)


def make_random_iterator(*, batch_size: int, seq_len: int, vocab_size: int, img_start_id: int,
                         img_context_id: int, img_end_id: int, seed: int = 0,
                         process_index: int = 0, num_batches: int = 1 << 30):
  """A checkpointable Grain iterator of ``make_random_batch`` batches (per process).

  Batch ``i`` of process ``p`` is drawn from ``default_rng([seed, p, i])``, so a
  restored iterator (``set_state``) continues with exactly the batches of an
  uninterrupted one.
  """

  def make(i):
    rng = np.random.default_rng([seed, process_index, int(i)])
    return make_random_batch(rng, batch_size=batch_size, seq_len=seq_len, vocab_size=vocab_size,
                             img_start_id=img_start_id, img_context_id=img_context_id,
                             img_end_id=img_end_id)

  return iter(grain.MapDataset.range(num_batches).map(make).to_iter_dataset())
