"""Inputs of the kernel tests: random packed segment and visual-unit ids, the 50 cases."""

from __future__ import annotations

import functools

import numpy as np

# Shape configurations of the kernel / blockwise comparisons (compiled once each); the
# data varies with the case index.
# (batch, seq, q heads, kv heads, head_dim, dtype, block_q, block_kv)
CONFIGS = [
    (2, 67, 2, 2, 16, "float32", 32, 32),
    (1, 130, 4, 2, 16, "float32", 32, 64),
    (2, 200, 4, 1, 8, "float32", 64, 32),
    (1, 300, 2, 1, 16, "float32", 64, 64),
    (2, 150, 4, 2, 16, "bfloat16", 32, 64),
    (1, 257, 4, 1, 16, "bfloat16", 64, 32),
]
N_CASES = 50


def packed_case(i: int):
  """Case ``i``: its config and ``(q, k, v, segment_ids, unit_ids, cotangent)``.

  q / k are ``2 * head_dim`` wide (the T | H | W branches), v ``head_dim``; the
  cotangent of the output is float32 normal noise on every row.
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  cfg = CONFIGS[i % len(CONFIGS)]
  batch, seq, hq, hkv, d, dtype, _, _ = cfg
  rng = np.random.default_rng(1000 + i)
  seg, unit = random_packed_ids(rng, batch, seq)
  dt = jnp.dtype(dtype)
  q = jnp.asarray(rng.normal(size=(batch, seq, hq, 2 * d)), dt)
  k = jnp.asarray(rng.normal(size=(batch, seq, hkv, 2 * d)), dt)
  v = jnp.asarray(rng.normal(size=(batch, seq, hkv, d)), dt)
  ct = jnp.asarray(rng.normal(size=(batch, seq, hq, d)), jnp.float32)
  return cfg, (q, k, v, jnp.asarray(seg), jnp.asarray(unit), ct)


@functools.lru_cache(maxsize=None)
def compare_fn(impl, batch, seq, hq, hkv, d, dtype, bq, bk):
  """Jitted ``(q, k, v, seg, unit, ct) -> ((out, dq, dk, dv) of impl, same of the
  reference)``, gradients of ``sum(out * ct)``; ``impl`` is ``"kernel"`` (the Pallas
  kernel) or ``"blockwise"`` (``ops/flash_blockwise.py``), both at blocks bq x bk."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from neo_jax.ops import flash_blockwise, flash_mixed, reference  # pylint: disable=import-outside-toplevel
  del batch, seq, hq, hkv, dtype
  scale = d ** -0.5
  impl_fn = {"kernel": flash_mixed.flash_mixed_attention,
             "blockwise": flash_blockwise.blockwise_attention}[impl]

  def both(q, k, v, seg, unit, ct):
    def loss(fn, q, k, v):
      o = fn(q, k, v)
      return jnp.sum(o.astype(jnp.float32) * ct), o
    fast = lambda q, k, v: impl_fn(q, k, v, seg, unit, scale=scale, block_q=bq, block_kv=bk)
    ref = lambda q, k, v: reference.reference_attention(q, k, v, seg, unit, scale=scale)
    grad = lambda fn: jax.grad(functools.partial(loss, fn), argnums=(0, 1, 2),
                               has_aux=True)(q, k, v)
    (gk, ok), (gr, orf) = grad(fast), grad(ref)
    return (ok, *gk), (orf, *gr)

  return jax.jit(both)


def assert_close_to_reference(cfg, got, want) -> None:
  """``(out, dq, dk, dv)`` against the reference: float32 <= 2e-5 absolute, bfloat16
  <= 1e-2 relative to the largest reference entry."""
  for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.all(np.isfinite(a)), name
    err = np.max(np.abs(a - b))
    if cfg[5] == "float32":
      assert err <= 2e-5, (name, err)
    else:
      rel = err / np.max(np.abs(b))
      assert rel <= 1e-2, (name, rel)


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
