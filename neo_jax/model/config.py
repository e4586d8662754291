"""Model configuration schema and the released NEO / NEO-ov sizes.

The schema is an ``ml_collections.ConfigDict`` so that big_vision-style config
files can override any field from the command line
(``--config.model.num_prebuffer_layers=4``).

Sizes: docs/design.md §1.6 (NEO paper Table 1, the release's ``config.json`` files).
"""

from __future__ import annotations

import ml_collections

from neo_jax.core import geometry
from neo_jax.core.tokens import (IMG_CONTEXT_TOKEN_ID, IMG_END_TOKEN_ID, IMG_START_TOKEN_ID,
                                 QWEN3_VOCAB_SIZE)


def base_config() -> ml_collections.ConfigDict:
  """Returns the full schema with NEO-2B values.

  Fields (units in brackets):
    vocab_size: rows of ``embed_tokens`` / ``lm_head``.
    hidden_size, intermediate_size: LLM width D and MLP width I.
    num_llm_layers: post-LLM layers (the Qwen3 layers).
    num_prebuffer_layers: pre-Buffer layers ("extra_num_layers" in the release).
    num_heads, num_kv_heads, head_dim: attention shape (GQA when kv < q).
    rms_norm_eps: epsilon of every RMSNorm.
    rope_theta: base of the T-branch RoPE (``rotate_half`` convention).
    rope_theta_hw: base of the H / W branch RoPE (on head_dim / 2 channels).
    rope_theta_vision: base of the patch embedder's interleaved 2D RoPE.
    attention_mask: "mixed" (NEO: bidirectional inside an image) | "causal"
      (images attend causally too; the NEO paper's Table 3 ablation).
    rope_mode: "native" (NEO's T/H/W Native-RoPE) | "1d" (one running position
      per token, the H/W branches at position 0) | "mrope" (Qwen2-VL's multimodal
      RoPE on the T branch, H/W branches off). Ablations of the NEO paper's Table 3;
      only "native" + "mixed" can be exported to the release.
    max_position_embeddings(_hw/_vision): written into exported configs only.
    tie_word_embeddings: ``lm_head`` shares ``embed_tokens``.
    vision_hidden: channels of ``patch_embedding`` (V).
    patch_size: [pixels] side of a patch (16).
    downsample: patches per visual-token side (2: one token per 32x32 px).
    num_channels: image channels (3).
    img_context_token_id / img_start_token_id / img_end_token_id: token ids.
    dtype: compute dtype ("bfloat16" or "float32").
    param_dtype: parameter storage dtype.
    remat_policy: "none" | "full" | "minimal" (save projections) | "minimal_flash"
      (minimal + the attention kernel's output and logsumexp: no attention recompute) |
      "save_qkv_attn" (save q/k/v and attention output) | "dots".
    attention_impl: "auto" (the Pallas kernel on TPU, the plain-JAX block-sparse
      attention elsewhere) | "xla_blockwise" | "pallas" | "xla" (the dense
      reference, the tests' oracle: ``[S, S]`` scores per head).
    attention_block_q / attention_block_kv: kernel block sizes [tokens].
    max_sample_tokens: the longest packed sample [tokens], 0 = the sequence length. The
      packer drops longer samples (counted skip ``too_long``), the trainer refuses a
      batch that holds one, and the TPU kernel sizes its grid by it
      (``ops/block_ranges.kv_step_bound``): with samples much shorter than the
      sequence, the grid's step axis shrinks from the whole kv block count.
    max_visual_tokens: static number of visual positions per sequence the patch
      embedder runs on (gathered, ``model/visual_gather.py``); 0 = every position. The
      packer enforces it per sequence; a row with more gets NaN embeddings.
    loss_vocab_chunk: [rows] vocabulary chunk of the chunked LM head + CE.
    max_supervised_tokens: static number of supervised positions gathered per
      sequence before the LM head (0 = all positions; docs/design.md §3.6).
    loss_weighting: "token" | "sample" | "square" (docs/design.md §3.5).
    init_std: std of N(0, std) initialisers (0.02 in the release).
  """
  c = ml_collections.ConfigDict()
  c.vocab_size = QWEN3_VOCAB_SIZE
  c.hidden_size = 2048
  c.intermediate_size = 6144
  c.num_llm_layers = 28
  c.num_prebuffer_layers = 12
  c.num_heads = 16
  c.num_kv_heads = 8
  c.head_dim = 128
  c.rms_norm_eps = 1e-6
  c.rope_theta = 1_000_000.0
  c.rope_theta_hw = 10_000.0
  c.rope_theta_vision = 10_000.0
  c.attention_mask = "mixed"
  c.rope_mode = "native"
  c.max_position_embeddings = 40960
  c.max_position_embeddings_hw = 10000
  c.max_position_embeddings_vision = 10000
  c.tie_word_embeddings = True
  c.vision_hidden = 1024
  c.patch_size = geometry.PATCH_SIZE
  c.downsample = geometry.DOWNSAMPLE
  c.num_channels = geometry.NUM_CHANNELS
  c.img_context_token_id = IMG_CONTEXT_TOKEN_ID
  c.img_start_token_id = IMG_START_TOKEN_ID
  c.img_end_token_id = IMG_END_TOKEN_ID
  c.dtype = "bfloat16"
  c.param_dtype = "float32"
  c.remat_policy = "minimal"
  c.attention_impl = "auto"
  c.attention_block_q = 512
  c.attention_block_kv = 512
  c.max_sample_tokens = 0
  c.max_visual_tokens = 0
  c.loss_vocab_chunk = 16384
  c.max_supervised_tokens = 0
  c.loss_weighting = "square"
  c.init_std = 0.02
  return c


def _neo_2b() -> ml_collections.ConfigDict:
  return base_config()


def _neo_9b() -> ml_collections.ConfigDict:
  c = base_config()
  c.hidden_size = 4096
  c.intermediate_size = 12288
  c.num_llm_layers = 36
  c.num_prebuffer_layers = 6
  c.num_heads = 32
  c.num_kv_heads = 8
  c.tie_word_embeddings = False
  return c


def _tiny() -> ml_collections.ConfigDict:
  """A model small enough for float64 references and CPU tests."""
  c = base_config()
  c.vocab_size = 512
  c.hidden_size = 64
  c.intermediate_size = 128
  c.num_llm_layers = 2
  c.num_prebuffer_layers = 1
  c.num_heads = 4
  c.num_kv_heads = 2
  c.head_dim = 16
  c.vision_hidden = 32
  c.img_context_token_id = 500
  c.img_start_token_id = 501
  c.img_end_token_id = 502
  c.dtype = "float32"
  c.remat_policy = "none"
  c.loss_vocab_chunk = 128
  return c


PRESETS = {
    "neo_2b": _neo_2b,
    "neo_9b": _neo_9b,
    # NEO-ov shares NEO's architecture (docs/design.md §1.6); the presets differ only
    # in the training recipe, kept in configs/.
    "neo_ov_2b": _neo_2b,
    "neo_ov_9b": _neo_9b,
    "tiny": _tiny,
}


def get_model_config(preset: str = "neo_2b", **overrides) -> ml_collections.ConfigDict:
  """Returns the model config of a named preset, with field overrides.

  Args:
    preset: one of ``PRESETS`` ("neo_2b", "neo_9b", "neo_ov_2b", "neo_ov_9b",
      "tiny").
    **overrides: field=value pairs applied after the preset.

  Raises:
    ValueError: unknown preset name, or an override names no field.
  """
  if preset not in PRESETS:
    raise ValueError(f"Unknown model preset {preset!r}; choose one of {sorted(PRESETS)}.")
  c = PRESETS[preset]()
  for k, v in overrides.items():
    if k not in c:
      raise ValueError(f"Model config has no field {k!r}; fields: {sorted(c.keys())}.")
    c[k] = v
  validate(c)
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks the consistency of a model config.

  Raises:
    ValueError: head_dim odd or not divisible by 4 (the H/W split halves it and
      RoPE pairs channels), heads not a multiple of kv heads, vision_hidden
      not divisible by 4 (two RoPE halves of pairs), unknown enum values.
  """
  if c.head_dim % 4:
    raise ValueError(f"head_dim={c.head_dim} must be divisible by 4 (H/W halves are rotated in pairs).")
  if c.num_heads % c.num_kv_heads:
    raise ValueError(f"num_heads={c.num_heads} must be a multiple of num_kv_heads={c.num_kv_heads}.")
  if c.vision_hidden % 4:
    raise ValueError(f"vision_hidden={c.vision_hidden} must be divisible by 4.")
  if c.remat_policy not in ("none", "full", "minimal", "minimal_flash", "save_qkv_attn", "dots"):
    raise ValueError(f"remat_policy={c.remat_policy!r} is not one of "
                     "none/full/minimal/minimal_flash/save_qkv_attn/dots.")
  if c.attention_impl not in ("xla", "xla_blockwise", "pallas", "auto"):
    raise ValueError(f"attention_impl={c.attention_impl!r} is not one of "
                     "auto/xla_blockwise/pallas/xla.")
  if c.get("attention_mask", "mixed") not in ("mixed", "causal"):
    raise ValueError(f"attention_mask={c.attention_mask!r} is not one of mixed/causal.")
  if c.get("rope_mode", "native") not in ("native", "1d", "mrope"):
    raise ValueError(f"rope_mode={c.rope_mode!r} is not one of native/1d/mrope.")
  if c.get("max_visual_tokens", 0) < 0:
    raise ValueError(f"max_visual_tokens={c.max_visual_tokens} must be >= 0 (0 = no gather).")
  if c.get("max_sample_tokens", 0) < 0:
    raise ValueError(f"max_sample_tokens={c.max_sample_tokens} must be >= 0 (0 = no cap).")
  if c.loss_weighting not in ("token", "sample", "square"):
    raise ValueError(f"loss_weighting={c.loss_weighting!r} is not one of token/sample/square.")


def num_layers(c: ml_collections.ConfigDict) -> int:
  """Total decoder layers (pre-Buffer + post-LLM), the exported num_hidden_layers."""
  return c.num_prebuffer_layers + c.num_llm_layers
