"""A float64 NumPy reference of the NEO forward pass and loss, written from docs/design.md.

Independent of ``neo_jax.model`` and ``neo_jax.ops`` by construction: nothing
here imports them. Inputs are token ids, packed-sample ids and the images as
full pixel arrays; weights are a plain ``dict`` of NumPy arrays with the
release's PyTorch state-dict names and layouts (docs/design.md §5.3: Linear
``[out, in]``, Conv ``OIHW``), e.g. ``"layers.3.self_attn.q_proj_hw.weight"``.

What each part follows:
* patch embedder (§1.1): ImageNet normalisation, a real 16x16 / stride-16
  convolution over each image, exact GELU (``math.erf``), the interleaved 2D
  RoPE (first half of the channels by patch column, second half by patch row),
  a real 2x2 / stride-2 convolution; tokens row-major over the token grid;
* positions (§1.3) and mask (§1.4) from the token ids with explicit loops;
* native primitive (§1.2): Qwen3 layer, T / H / W branches with their norms and
  ``rotate_half`` RoPE, scale ``1 / sqrt(head_dim)``, GQA by repeating kv heads;
* loss (§3.5): full logits, log-softmax, per-sample weights.
"""

from __future__ import annotations

import math

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
IGNORE = -100


# ----------------------------------------------------------------------------
# Elementary functions.
# ----------------------------------------------------------------------------

def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
  """``w * x / sqrt(mean(x^2) + eps)`` over the last axis."""
  return w * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def gelu_exact(x: np.ndarray) -> np.ndarray:
  """``x * Phi(x)`` with the error function (PyTorch ``nn.GELU()``)."""
  erf = np.vectorize(math.erf)
  return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def silu(x: np.ndarray) -> np.ndarray:
  return x / (1.0 + np.exp(-x))


def inv_freq(dim: int, theta: float) -> np.ndarray:
  """``theta ** (-2i / dim)`` for ``i < dim / 2``."""
  return np.array([theta ** (-2.0 * i / dim) for i in range(dim // 2)])


def rope_rotate_half(x: np.ndarray, pos: np.ndarray, theta: float) -> np.ndarray:
  """Qwen3 RoPE: channel ``i`` pairs with ``i + dim/2``.

  Args:
    x: ``[S, H, dim]``.
    pos: ``[S]`` integer positions.
  """
  dim = x.shape[-1]
  ang = pos[:, None].astype(np.float64) * inv_freq(dim, theta)[None, :]  # [S, dim/2]
  cos = np.concatenate([np.cos(ang), np.cos(ang)], axis=-1)[:, None, :]
  sin = np.concatenate([np.sin(ang), np.sin(ang)], axis=-1)[:, None, :]
  rot = np.concatenate([-x[..., dim // 2:], x[..., : dim // 2]], axis=-1)
  return x * cos + rot * sin


def rope_interleaved(x: np.ndarray, pos: int, theta: float) -> np.ndarray:
  """RoPE on pairs ``(2i, 2i+1)`` of a single vector ``x [dim]`` at ``pos``."""
  out = np.empty_like(x)
  freqs = inv_freq(x.shape[0], theta)
  for i, f in enumerate(freqs):
    c, s = math.cos(pos * f), math.sin(pos * f)
    a, b = x[2 * i], x[2 * i + 1]
    out[2 * i] = a * c - b * s
    out[2 * i + 1] = a * s + b * c
  return out


# ----------------------------------------------------------------------------
# Patch embedder (§1.1).
# ----------------------------------------------------------------------------

def conv2d_stride_eq_kernel(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Conv with kernel = stride, no padding: ``x [C, H, W]``, ``w [O, C, k, k]`` -> ``[O, H/k, W/k]``."""
  o, c, k, _ = w.shape
  _, hh, ww = x.shape
  out = np.zeros((o, hh // k, ww // k))
  for i in range(hh // k):
    for j in range(ww // k):
      window = x[:, i * k:(i + 1) * k, j * k:(j + 1) * k]
      out[:, i, j] = np.einsum("ocyx,cyx->o", w, window) + b
  return out


def embed_image(img: np.ndarray, wts: dict, cfg: dict) -> np.ndarray:
  """One image ``[H, W, 3] uint8`` -> visual tokens ``[(H/32) * (W/32), D]`` row-major."""
  x = (img.astype(np.float64) / 255.0 - MEAN) / STD  # [H, W, 3]
  x = x.transpose(2, 0, 1)  # [3, H, W]
  feat = conv2d_stride_eq_kernel(x, wts["vision.patch_embedding.weight"],
                                 wts["vision.patch_embedding.bias"])  # [V, gh, gw]
  feat = gelu_exact(feat)
  v, gh, gw = feat.shape
  half = v // 2
  for py in range(gh):
    for px in range(gw):
      vec = feat[:, py, px]
      feat[:, py, px] = np.concatenate([
          rope_interleaved(vec[:half], px, cfg["rope_theta_vision"]),
          rope_interleaved(vec[half:], py, cfg["rope_theta_vision"]),
      ])
  tok = conv2d_stride_eq_kernel(feat, wts["vision.dense_embedding.weight"],
                                wts["vision.dense_embedding.bias"])  # [D, gh/2, gw/2]
  return tok.reshape(tok.shape[0], -1).T


# ----------------------------------------------------------------------------
# Positions and mask (§1.3, §1.4).
# ----------------------------------------------------------------------------

def positions_and_units(ids: np.ndarray, seg: np.ndarray, image_grids: list, cfg: dict):
  """t / h / w and visual-unit ids of one packed row, with explicit loops.

  Args:
    ids, seg: ``[S]`` token ids and packed-sample ids (0 = padding).
    image_grids: ``(rows, cols)`` token grid of each image of the row, in order.

  Returns:
    ``(t, h, w, unit)`` each ``[S] int``.
  """
  s = len(ids)
  t, h, w, unit = (np.zeros(s, np.int64) for _ in range(4))
  ctx, start = cfg["img_context_token_id"], cfg["img_start_token_id"]
  cur_t, prev_seg = -1, None
  n_images, pending_first_ctx, k_in_image = 0, False, 0
  for i in range(s):
    if seg[i] != prev_seg:  # a new packed sample: t restarts at 0
      cur_t, prev_seg = -1, seg[i]
    if ids[i] == ctx:
      if pending_first_ctx:  # first visual token of an image advances t once
        cur_t += 1
        pending_first_ctx = False
      rows, cols = image_grids[n_images - 1]
      h[i], w[i] = divmod(k_in_image, cols)
      assert h[i] < rows
      k_in_image += 1
      unit[i] = n_images
    else:
      cur_t += 1
    if ids[i] == start:
      n_images += 1
      pending_first_ctx, k_in_image = True, 0
    t[i] = cur_t
  return t, h, w, unit


def mixed_mask(seg: np.ndarray, unit: np.ndarray) -> np.ndarray:
  """``[S, S] bool``: i may attend j iff same sample and (j <= i or same image); a
  padding token (seg 0) attends only itself (its rows are never used; docs/design.md §1.4 only
  requires that padding does not leak into real tokens)."""
  s = len(seg)
  m = np.zeros((s, s), bool)
  for i in range(s):
    for j in range(s):
      same_unit = unit[i] == unit[j] and unit[i] > 0
      m[i, j] = seg[i] == seg[j] and (j <= i or same_unit) and (seg[i] > 0 or i == j)
  return m


# ----------------------------------------------------------------------------
# Decoder (§1.2, §1.5).
# ----------------------------------------------------------------------------

def attention(x: np.ndarray, wts: dict, p: str, cfg: dict, t, h, w, mask) -> np.ndarray:
  """The native primitive's T/H/W attention on one row ``x [S, D]``."""
  s = x.shape[0]
  hq, hkv, d = cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"]
  eps = cfg["rms_norm_eps"]
  lin = lambda name: x @ wts[f"{p}.self_attn.{name}.weight"].T
  nrm = lambda a, name: rms_norm(a, wts[f"{p}.self_attn.{name}.weight"], eps)
  q = lin("q_proj").reshape(s, hq, d)
  k = lin("k_proj").reshape(s, hkv, d)
  v = lin("v_proj").reshape(s, hkv, d)
  qhw = lin("q_proj_hw").reshape(s, hq, d)
  khw = lin("k_proj_hw").reshape(s, hkv, d)
  half = d // 2
  q_t = rope_rotate_half(nrm(q, "q_norm"), t, cfg["rope_theta"])
  k_t = rope_rotate_half(nrm(k, "k_norm"), t, cfg["rope_theta"])
  q_h = rope_rotate_half(nrm(qhw[..., :half], "q_norm_h"), h, cfg["rope_theta_hw"])
  q_w = rope_rotate_half(nrm(qhw[..., half:], "q_norm_w"), w, cfg["rope_theta_hw"])
  k_h = rope_rotate_half(nrm(khw[..., :half], "k_norm_h"), h, cfg["rope_theta_hw"])
  k_w = rope_rotate_half(nrm(khw[..., half:], "k_norm_w"), w, cfg["rope_theta_hw"])
  rep = hq // hkv  # repeat_kv: query head i uses kv head i // rep
  k_t, k_h, k_w, v = (np.repeat(a, rep, axis=1) for a in (k_t, k_h, k_w, v))
  scores = (np.einsum("qhd,khd->hqk", q_t, k_t) + np.einsum("qhd,khd->hqk", q_h, k_h)
            + np.einsum("qhd,khd->hqk", q_w, k_w)) / math.sqrt(d)
  scores = np.where(mask[None], scores, -np.inf)
  scores = scores - scores.max(axis=-1, keepdims=True)
  probs = np.exp(scores)
  probs /= probs.sum(axis=-1, keepdims=True)
  out = np.einsum("hqk,khd->qhd", probs, v).reshape(s, hq * d)
  return out @ wts[f"{p}.self_attn.o_proj.weight"].T


def decoder_layer(x, wts, i, cfg, t, h, w, mask):
  p, eps = f"layers.{i}", cfg["rms_norm_eps"]
  a = rms_norm(x, wts[f"{p}.input_layernorm.weight"], eps)
  x = x + attention(a, wts, p, cfg, t, h, w, mask)
  a = rms_norm(x, wts[f"{p}.post_attention_layernorm.weight"], eps)
  mlp = (silu(a @ wts[f"{p}.mlp.gate_proj.weight"].T) * (a @ wts[f"{p}.mlp.up_proj.weight"].T))
  return x + mlp @ wts[f"{p}.mlp.down_proj.weight"].T


def forward_row(ids: np.ndarray, seg: np.ndarray, images: list, wts: dict, cfg: dict) -> np.ndarray:
  """Logits ``[S, vocab] float64`` of one packed row.

  Args:
    ids, seg: ``[S]`` token ids and packed-sample ids.
    images: the row's images / video frames ``[H, W, 3] uint8`` in token order.
    wts: release-named float64 weights; cfg: plain dict of config values.
  """
  grids = [(im.shape[0] // 32, im.shape[1] // 32) for im in images]
  t, h, w, unit = positions_and_units(ids, seg, grids, cfg)
  mask = mixed_mask(seg, unit)
  x = wts["embed_tokens.weight"][ids].astype(np.float64)
  ctx_pos = np.flatnonzero(ids == cfg["img_context_token_id"])
  vis = np.concatenate([embed_image(im, wts, cfg) for im in images], axis=0) if images else None
  if vis is not None:
    assert vis.shape[0] == len(ctx_pos), (vis.shape, len(ctx_pos))
    x[ctx_pos] = vis
  for i in range(cfg["num_layers"]):
    x = decoder_layer(x, wts, i, cfg, t, h, w, mask)
  x = rms_norm(x, wts["norm.weight"], cfg["rms_norm_eps"])
  head = wts["embed_tokens.weight"] if cfg["tie_word_embeddings"] else wts["lm_head.weight"]
  return x @ head.T


def forward(input_ids: np.ndarray, segment_ids: np.ndarray, images: list, wts: dict,
            cfg: dict) -> np.ndarray:
  """Logits ``[B, S, vocab] float64``; ``images[b]`` lists row ``b``'s images."""
  return np.stack([forward_row(input_ids[b], segment_ids[b], images[b], wts, cfg)
                   for b in range(input_ids.shape[0])])


# ----------------------------------------------------------------------------
# Loss (§3.5).
# ----------------------------------------------------------------------------

def predictions(labels: np.ndarray, segment_ids: np.ndarray):
  """Supervised predictions ``(b, i, target, sample n)`` in row / position order.

  Position ``i`` predicts ``labels[b, i + 1]`` when that is not ignored and
  ``i + 1`` lies in the same (non-padding) packed sample.
  """
  b_, s = labels.shape
  preds = []
  for b in range(b_):
    for i in range(s - 1):
      if (labels[b, i + 1] != IGNORE and segment_ids[b, i] > 0
          and segment_ids[b, i + 1] == segment_ids[b, i]):
        preds.append((b, i, int(labels[b, i + 1]), int(segment_ids[b, i])))
  counts = {}
  for b, _, _, sg in preds:
    counts[(b, sg)] = counts.get((b, sg), 0) + 1
  return [(b, i, tgt, counts[(b, sg)]) for b, i, tgt, sg in preds]


def weight_of(n: int, mode: str) -> float:
  return {"token": 1.0, "sample": 1.0 / n, "square": 1.0 / math.sqrt(n)}[mode]


def loss(logits: np.ndarray, labels: np.ndarray, segment_ids: np.ndarray, mode: str,
         max_per_row: int | None = None):
  """``(loss, sum of weights, dropped)`` from full logits ``[B, S, V]``.

  ``max_per_row`` keeps only the first M predictions of each row (the rest
  are counted as dropped); weights still use each sample's full n.
  """
  z = logits - logits.max(axis=-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
  num = den = 0.0
  kept, dropped = {}, 0
  for b, i, tgt, n in predictions(labels, segment_ids):
    kept[b] = kept.get(b, 0) + 1
    if max_per_row is not None and kept[b] > max_per_row:
      dropped += 1
      continue
    wgt = weight_of(n, mode)
    num += wgt * -logp[b, i, tgt]
    den += wgt
  return num / den, den, dropped
