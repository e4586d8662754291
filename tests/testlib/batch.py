"""Packed multimodal test batches in both formats: ours (``neo_jax.core.batch``)
and the release's (per image a row-major patch grid of normalised pixels +
``grid_hw``). Numpy only; built from the same random images so the two
formats carry the same content.

A sample is a list of segments: ``("text", n)`` (n random text tokens),
``("image", H, W)`` (pixels, multiples of 32) or ``("video", frames, H, W)``
(each frame its own ``<img> ... </img>`` unit).
"""

from __future__ import annotations

import numpy as np

from neo_jax.core.batch import assemble_batch

MEAN = np.asarray((0.485, 0.456, 0.406), np.float32)
STD = np.asarray((0.229, 0.224, 0.225), np.float32)


def _image_tokens(img: np.ndarray, patch: int, k: int):
  """Our per-token pixels ``[n_tok, k*k, 3PP] uint8`` and ``(row, col)`` of each token."""
  c, hgt, wid = img.shape
  gh, gw = hgt // patch, wid // patch
  patches = img.reshape(c, gh, patch, gw, patch).transpose(1, 3, 0, 2, 4)  # [gh, gw, c, P, P]
  patches = patches.reshape(gh, gw, c * patch * patch)
  th, tw = gh // k, gw // k
  tok = patches.reshape(th, k, tw, k, -1).transpose(0, 2, 1, 3, 4).reshape(th * tw, k * k, -1)
  rc = np.stack(np.meshgrid(np.arange(th), np.arange(tw), indexing="ij"), -1).reshape(-1, 2)
  return tok, rc


def _release_pixels(img: np.ndarray, patch: int):
  """Release format: ``[gh*gw, 3PP] float32`` normalised, and ``(gh, gw)``."""
  c, hgt, wid = img.shape
  x = (img.astype(np.float32) / 255.0 - MEAN[:, None, None]) / STD[:, None, None]
  gh, gw = hgt // patch, wid // patch
  x = x.reshape(c, gh, patch, gw, patch).transpose(1, 3, 0, 2, 4).reshape(gh * gw, -1)
  return x, (gh, gw)


def build(sequences, cfg, seq_len: int, seed: int = 0, pad_id: int = 0):
  """Builds a packed batch.

  Args:
    sequences: list (batch) of lists (packed samples) of segment lists.
    cfg: our model config (token ids, patch size, downsample, vocab).
    seq_len: S; every sequence is padded to it (segment id 0).
    seed: numpy seed of tokens and pixels.
    pad_id: padding token.

  Returns:
    ``(ours, release)``: ``ours`` a dict of the model's batch arrays
    (``input_ids``, ``segment_ids``, ``token_hw``, ``pixel_values``);
    ``release`` a list per sequence of dicts per sample with ``input_ids``
    ``[n] int64``, ``pixel_values`` ``[N, 3PP] float32`` (or None),
    ``grid_hw`` ``[n_img, 2] int64`` (or None) and ``span`` (start, end) in the
    packed sequence.
  """
  rng = np.random.default_rng(seed)
  p, k = cfg.patch_size, cfg.downsample
  special = {cfg.img_context_token_id, cfg.img_start_token_id, cfg.img_end_token_id}
  text_hi = min(special)
  rows, release = [], []
  for bi, samples in enumerate(sequences):
    pos, row, rel_seq = 0, [], []
    for segments in samples:
      ids, hw, tok_pix, pix, grids = [], [], [], [], []

      def add_image(hgt, wid):
        img = rng.integers(0, 256, (3, hgt, wid), dtype=np.uint8)
        tok, rc = _image_tokens(img, p, k)
        ids.extend([cfg.img_start_token_id] + [cfg.img_context_token_id] * len(tok)
                   + [cfg.img_end_token_id])
        hw.extend([(0, 0)] + rc.tolist() + [(0, 0)])
        tok_pix.append(tok)
        x, g = _release_pixels(img, p)
        pix.append(x)
        grids.append(g)

      for seg in segments:
        if seg[0] == "text":
          ids.extend(rng.integers(0, text_hi, seg[1]).tolist())
          hw.extend([(0, 0)] * seg[1])
        elif seg[0] == "image":
          add_image(seg[1], seg[2])
        elif seg[0] == "video":
          for _ in range(seg[1]):
            add_image(seg[2], seg[3])
        else:
          raise ValueError(seg)
      start, pos = pos, pos + len(ids)
      if pos > seq_len:
        raise ValueError(f"sequence {bi} needs {pos} > {seq_len} tokens")
      row.append({"input_ids": np.asarray(ids, np.int32),
                  "token_hw": np.asarray(hw, np.int32).reshape(-1, 2),
                  "pixel_values": (np.concatenate(tok_pix, 0) if tok_pix
                                   else np.zeros((0, k * k, 3 * p * p), np.uint8))})
      rel_seq.append({
          "input_ids": np.asarray(ids, np.int64),
          "pixel_values": np.concatenate(pix, 0) if pix else None,
          "grid_hw": np.asarray(grids, np.int64) if grids else None,
          "span": (start, pos),
      })
    rows.append(row)
    release.append(rel_seq)
  full = assemble_batch(rows, seq_len, pad_id=pad_id, img_context_id=cfg.img_context_token_id,
                        patch_size=p)
  ours = {key: full[key] for key in ("input_ids", "segment_ids", "token_hw", "pixel_values")}
  return ours, release


# Default multimodal batch of the round-trip tests: two sequences; text, one
# image, two images of different sizes, a 3-frame video.
SEQUENCES = [
    [[("text", 7)], [("text", 3), ("image", 64, 96), ("text", 4)]],
    [[("text", 2), ("image", 64, 64), ("text", 2), ("image", 32, 96), ("text", 3)],
     [("text", 3), ("video", 3, 32, 64), ("text", 2)]],
]
