"""An independent minimal PyTorch NEO forward, written from docs/design.md (§1, §5).

Used to check conversions: it reads the release's state-dict keys and
``config.json`` and takes the release's input format, so an export that this
model runs with our logits is an export whose layouts are right. It shares no
code with ``neo_jax`` (positions, mask, RoPE, convolutions are all computed
here in torch).

Inputs (one packed sequence):
  input_ids: ``[S] int64``.
  sample_ids: ``[S] int64`` packed-sample index (any values; equal = same
    sample, samples contiguous; padding may be its own sample).
  pixel_values: ``[N_patches, 3 P P] float`` ImageNet-normalised pixels, for
    each image (in order of appearance) its full 16-px patch grid row-major,
    each patch flattened (c, y, x) (the release's ``preprocess_pixel_values``).
  grid_hw: ``[n_images, 2] int64`` patch-grid (rows, cols) of each image.
Output: logits ``[S, vocab]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rms(x, w, eps):
  xf = x.float()
  y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
  return w * y.to(x.dtype)


def _rope_half(x, pos, theta):
  """rotate_half RoPE. x ``[S, H, n]``, pos ``[S]``."""
  n = x.shape[-1]
  inv = 1.0 / (theta ** (torch.arange(0, n, 2, dtype=torch.float64) / n))
  ang = pos.double()[:, None] * inv[None, :]
  ang = torch.cat([ang, ang], -1)[:, None, :]
  cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
  x1, x2 = x[..., : n // 2], x[..., n // 2:]
  return x * cos + torch.cat([-x2, x1], -1) * sin


def _rope_interleaved(x, pos, theta):
  """Interleaved-pair RoPE. x ``[N, n]``, pos ``[N]``."""
  n = x.shape[-1]
  inv = 1.0 / (theta ** (torch.arange(0, n, 2, dtype=torch.float64) / n))
  ang = pos.double()[:, None] * inv[None, :]
  cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
  a, b = x[:, 0::2], x[:, 1::2]
  return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).reshape(x.shape)


def _scalar(v):
  while isinstance(v, (list, tuple)):
    v = v[0]
  return v


class TorchNEO:
  """The reference model.

  Args:
    state_dict: ``{release key: tensor}``; ``language_model.lm_head.weight``
      may be absent when tied.
    config: the release ``config.json`` as a dict.
    dtype: compute dtype (float32 or float64).
  """

  def __init__(self, state_dict, config, dtype=torch.float32):
    self.sd = {k: v.to(dtype) for k, v in state_dict.items()}
    self.dtype = dtype
    llm, vis = config["llm_config"], config["vision_config"]
    self.n_layers = llm["num_hidden_layers"]
    self.hq, self.hkv = llm["num_attention_heads"], llm["num_key_value_heads"]
    self.d = llm.get("head_dim") or llm["hidden_size"] // self.hq
    self.eps = llm["rms_norm_eps"]
    self.theta, self.theta_hw = llm["rope_theta"], llm["rope_theta_hw"]
    self.theta_vis = vis["rope_theta_vision"]
    self.patch = vis["patch_size"]
    self.k = int(round(1 / _scalar(vis["downsample_ratio"])))
    self.tied = llm.get("tie_word_embeddings", False)
    self.ctx_id = config["img_context_token_id"]
    self.start_id = config["img_start_token_id"]

  def w(self, key):
    return self.sd[key]

  # ---- vision
  def vision(self, pixel_values, grid_hw):
    """``[N_patches, 3PP] -> [N_tokens, D]`` (release NEOVisionEmbeddings semantics)."""
    p = self.patch
    x = pixel_values.to(self.dtype).view(-1, 3, p, p)
    x = F.conv2d(x, self.w("vision_model.embeddings.patch_embedding.weight"),
                 self.w("vision_model.embeddings.patch_embedding.bias"), stride=p)
    x = F.gelu(x.flatten(1))  # [N, V]
    outs, start = [], 0
    for gh, gw in grid_hw.tolist():
      n = gh * gw
      e = x[start:start + n]
      idx = torch.arange(n)
      col, row = idx % gw, idx // gw
      half = e.shape[-1] // 2
      e = torch.cat([_rope_interleaved(e[:, :half], col, self.theta_vis),
                     _rope_interleaved(e[:, half:], row, self.theta_vis)], -1)
      img = e.view(gh, gw, -1).permute(2, 0, 1)[None]
      y = F.conv2d(img, self.w("vision_model.embeddings.dense_embedding.weight"),
                   self.w("vision_model.embeddings.dense_embedding.bias"), stride=self.k)
      outs.append(y[0].permute(1, 2, 0).reshape(-1, y.shape[1]))
      start += n
    assert start == x.shape[0], "grid_hw does not cover pixel_values"
    return torch.cat(outs, 0)

  # ---- positions and mask
  def indexes(self, input_ids, sample_ids, grid_hw):
    """(t, h, w) ``[3, S]`` per docs/design.md §1.3, t restarting per sample."""
    s = input_ids.shape[0]
    t = torch.zeros(s, dtype=torch.long)
    h = torch.zeros(s, dtype=torch.long)
    w = torch.zeros(s, dtype=torch.long)
    grids = [(gh // self.k, gw // self.k) for gh, gw in grid_hw.tolist()]
    img, within, cur_t, prev_start = -1, 0, -1, False
    for i in range(s):
      if i == 0 or sample_ids[i] != sample_ids[i - 1]:
        cur_t, prev_start = -1, False
      tok = int(input_ids[i])
      # A token after <img> opens a new t step; every non-visual token is a step.
      cur_t += int(prev_start) + int(tok != self.ctx_id)
      if tok == self.ctx_id:
        if prev_start:  # first visual token of the next image
          img, within = img + 1, 0
        gw = grids[img][1]
        h[i], w[i] = within // gw, within % gw
        within += 1
      t[i] = cur_t
      prev_start = tok == self.start_id
    return torch.stack([t, h, w])

  def mask(self, sample_ids, t):
    """Additive ``[S, S]``: same sample and (causal or same t)."""
    s = t.shape[0]
    ar = torch.arange(s)
    ok = (sample_ids[:, None] == sample_ids[None, :]) & (
        (ar[None, :] <= ar[:, None]) | (t[:, None] == t[None, :]))
    return torch.where(ok, 0.0, float("-inf")).to(self.dtype)

  # ---- decoder
  def layer(self, i, x, idx, mask):
    p = f"language_model.model.layers.{i}."
    s, d, hq, hkv = x.shape[0], self.d, self.hq, self.hkv
    lin = lambda name, y: y @ self.w(p + name + ".weight").T
    hdn = _rms(x, self.w(p + "input_layernorm.weight"), self.eps)
    q = _rms(lin("self_attn.q_proj", hdn).view(s, hq, d), self.w(p + "self_attn.q_norm.weight"), self.eps)
    k = _rms(lin("self_attn.k_proj", hdn).view(s, hkv, d), self.w(p + "self_attn.k_norm.weight"), self.eps)
    v = lin("self_attn.v_proj", hdn).view(s, hkv, d)
    qhw = lin("self_attn.q_proj_hw", hdn).view(s, hq, d)
    khw = lin("self_attn.k_proj_hw", hdn).view(s, hkv, d)
    n = lambda y, name: _rms(y, self.w(p + f"self_attn.{name}.weight"), self.eps)
    qh, qw = n(qhw[..., : d // 2], "q_norm_h"), n(qhw[..., d // 2:], "q_norm_w")
    kh, kw = n(khw[..., : d // 2], "k_norm_h"), n(khw[..., d // 2:], "k_norm_w")
    t, hh, ww = idx
    q = torch.cat([_rope_half(q, t, self.theta), _rope_half(qh, hh, self.theta_hw),
                   _rope_half(qw, ww, self.theta_hw)], -1)
    k = torch.cat([_rope_half(k, t, self.theta), _rope_half(kh, hh, self.theta_hw),
                   _rope_half(kw, ww, self.theta_hw)], -1)
    rep = hq // hkv
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = torch.einsum("qhc,khc->hqk", q, k) / math.sqrt(d) + mask[None]
    attn = torch.softmax(scores.float(), -1).to(self.dtype)
    o = torch.einsum("hqk,khc->qhc", attn, v).reshape(s, hq * d)
    x = x + lin("self_attn.o_proj", o)
    hdn = _rms(x, self.w(p + "post_attention_layernorm.weight"), self.eps)
    mlp = lin("mlp.down_proj", F.silu(lin("mlp.gate_proj", hdn)) * lin("mlp.up_proj", hdn))
    return x + mlp

  @torch.no_grad()
  def forward(self, input_ids, sample_ids, pixel_values=None, grid_hw=None):
    emb = self.w("language_model.model.embed_tokens.weight")
    x = emb[input_ids].clone()
    sel = input_ids == self.ctx_id
    if sel.any():
      x[sel] = self.vision(pixel_values, grid_hw)
    else:
      grid_hw = torch.zeros((0, 2), dtype=torch.long)
    idx = self.indexes(input_ids, sample_ids, grid_hw)
    mask = self.mask(sample_ids, idx[0])
    for i in range(self.n_layers):
      x = self.layer(i, x, idx, mask)
    x = _rms(x, self.w("language_model.model.norm.weight"), self.eps)
    head = emb if self.tied else self.w("language_model.lm_head.weight")
    return x @ head.T
