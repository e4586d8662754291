"""Inputs of the kernel tests: random packed segment and visual-unit ids."""

from __future__ import annotations

import numpy as np


def random_packed_ids(rng: np.random.Generator, batch: int, seq: int):
  """Random packed batch: 1-4 samples, 0-3 images and maybe a video per sample, padding.

  Returns:
    ``(segment_ids, unit_ids)``, ``[batch, seq] int32`` numpy arrays.
  """
  seg = np.zeros((batch, seq), np.int32)
  unit = np.zeros((batch, seq), np.int32)
  next_unit = 1
  for b in range(batch):
    real = seq - int(rng.integers(0, seq // 4 + 1))        # trailing padding
    n_samples = int(rng.integers(1, 5))
    cuts = np.sort(rng.choice(np.arange(1, real), size=min(n_samples - 1, real - 1),
                              replace=False)) if n_samples > 1 else np.array([], int)
    bounds = [0, *cuts.tolist(), real]
    for s_id, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]), start=1):
      seg[b, lo:hi] = s_id
      n = hi - lo
      units = []                                 # (offset, size) inside the sample
      for _ in range(int(rng.integers(0, 4))):   # images
        units.append([int(rng.integers(1, max(2, n // 3) + 1))])
      if rng.random() < 0.3:                     # a video: frames back to back
        units.append([int(rng.integers(1, 9)) for _ in range(int(rng.integers(2, 5)))])
      pos = lo + int(rng.integers(0, 4))
      for frames in units:
        pos += int(rng.integers(0, 6))           # text between images
        for size in frames:
          end = min(pos + size, hi)
          if end > pos:
            unit[b, pos:end] = next_unit
            next_unit += 1
          pos = end
  return seg, unit
