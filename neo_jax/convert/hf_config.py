"""Hugging Face ``config.json`` <-> our model config.

* ``from_qwen3_config``: a Qwen3 ``config.json`` (``model_type`` "qwen3").
* ``from_release_config``: a released NEO / NEO-ov ``config.json``
  (``model_type`` "neo_chat"), tolerant of the release's quirks:
  ``llm_config.layer_types`` whose length is not ``num_hidden_layers`` (the
  training code's ``NEOLLMConfig`` sets ``num_hidden_layers`` after Qwen3Config
  built ``layer_types``), and ``vision_config.llm_hidden_size`` /
  ``downsample_ratio`` written as 1-element lists (a trailing comma in
  ``NEOVisionConfig.__init__`` makes them 1-tuples).
* ``to_release_config``: the ``config.json`` of docs/design.md §5.2, loadable by the
  release's ``NEOChatConfig`` (to_hf) and ``NEOChatModel``. Scalars are written
  for ``llm_hidden_size`` / ``downsample_ratio`` (the to_hf code indexes
  ``[0]`` into the 1-tuple its constructor builds, so a list in the JSON
  would break it), and ``layer_types`` has exactly ``num_hidden_layers``
  entries (transformers 4.57 validates it).
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from neo_jax.core import tokens
from neo_jax.model import config as config_lib

# Last NEO special token of docs/design.md §3.1 (<|interpreter|>); the vocabulary
# must hold ids up to it.
NEO_LAST_SPECIAL_TOKEN_ID = tokens.NEO_LAST_SPECIAL_TOKEN_ID
QWEN3_BOS_TOKEN_ID = tokens.ENDOFTEXT_TOKEN_ID
QWEN3_EOS_TOKEN_ID = tokens.IM_END_TOKEN_ID


def read_json(path: str) -> dict:
  """Reads a JSON file. Raises FileNotFoundError naming the path."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Missing file {path}.")
  with open(path) as f:
    return json.load(f)


def _scalar(v: Any, name: str) -> Any:
  """Unwraps the release's 1-tuple quirk: ``x``, ``[x]`` or ``[[x]]`` -> ``x``."""
  while isinstance(v, (list, tuple)):
    if len(v) != 1:
      raise ValueError(f"Config field {name}={v!r}: expected a scalar or a 1-element list.")
    v = v[0]
  return v


def _llm_fields(llm: dict) -> dict:
  hidden = llm["hidden_size"]
  heads = llm["num_attention_heads"]
  if llm.get("attention_bias"):
    raise ValueError("attention_bias=True is not supported (NEO / Qwen3 attention has no biases).")
  if llm.get("rope_scaling"):
    raise ValueError(f"rope_scaling={llm['rope_scaling']!r} is not supported (plain RoPE only).")
  if llm.get("hidden_act", "silu") != "silu":
    raise ValueError(f"hidden_act={llm['hidden_act']!r} is not supported (SwiGLU with silu).")
  return dict(
      vocab_size=llm["vocab_size"],
      hidden_size=hidden,
      intermediate_size=llm["intermediate_size"],
      num_heads=heads,
      num_kv_heads=llm.get("num_key_value_heads") or heads,
      head_dim=llm.get("head_dim") or hidden // heads,
      rms_norm_eps=llm.get("rms_norm_eps", 1e-6),
      rope_theta=float(llm.get("rope_theta", 1_000_000.0)),
      max_position_embeddings=llm.get("max_position_embeddings", 40960),
  )


def from_qwen3_config(hf: dict, *, num_prebuffer_layers: int, base: str = "neo_2b",
                      **overrides) -> ml_collections.ConfigDict:
  """Our config for a NEO model initialised from a Qwen3 LLM (docs/design.md §2).

  Args:
    hf: the Qwen3 ``config.json`` contents.
    num_prebuffer_layers: pre-Buffer layers to add before the Qwen3 layers.
    base: preset giving the vision / NEO-only fields.
    **overrides: any further config fields (e.g. ``vocab_size``).

  Raises:
    ValueError: not a Qwen3 config, or an unsupported feature.
  """
  if hf.get("model_type") not in ("qwen3", None):
    raise ValueError(f"model_type={hf.get('model_type')!r}: expected a Qwen3 config.")
  fields = _llm_fields(hf)
  fields.update(num_llm_layers=hf["num_hidden_layers"], num_prebuffer_layers=num_prebuffer_layers,
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)))
  fields.update(overrides)
  return config_lib.get_model_config(base, **fields)


def from_release_config(hf: dict, *, base: str = "neo_2b",
                        token_ids: dict | None = None, **overrides) -> ml_collections.ConfigDict:
  """Our config for a released NEO / NEO-ov checkpoint.

  Args:
    hf: the release's ``config.json`` contents (``model_type`` "neo_chat").
    base: preset for fields the release config does not carry.
    token_ids: ``{img_context_token_id, img_start_token_id, img_end_token_id}``
      found in the tokenizer files; used where the config has no value.
    **overrides: any further config fields.

  Raises:
    ValueError: wrong ``model_type``, inconsistent sizes (llm_hidden_size vs.
      hidden_size, extra_num_layers > num_hidden_layers), non-RGB input.
  """
  if hf.get("model_type") != "neo_chat":
    raise ValueError(f"model_type={hf.get('model_type')!r}: expected 'neo_chat'.")
  llm, vis = hf["llm_config"], hf.get("vision_config", {})
  fields = _llm_fields(llm)
  total = llm["num_hidden_layers"]
  extra = llm.get("extra_num_layers")
  if extra is None:
    raise ValueError("llm_config.extra_num_layers is missing: cannot split pre-Buffer / post-LLM.")
  if not 0 <= extra <= total:
    raise ValueError(f"extra_num_layers={extra} is not within num_hidden_layers={total}.")
  llm_hidden = _scalar(vis.get("llm_hidden_size", fields["hidden_size"]), "llm_hidden_size")
  if llm_hidden != fields["hidden_size"]:
    raise ValueError(f"vision_config.llm_hidden_size={llm_hidden} != hidden_size={fields['hidden_size']}.")
  ratio = _scalar(vis.get("downsample_ratio", hf.get("downsample_ratio", 0.5)), "downsample_ratio")
  if vis.get("num_channels", 3) != 3:
    raise ValueError(f"num_channels={vis['num_channels']}: only RGB is supported.")
  tie = llm.get("tie_word_embeddings", hf.get("tie_word_embeddings", False))
  ids = dict(token_ids or {})
  for k in ("img_context_token_id", "img_start_token_id", "img_end_token_id"):
    if hf.get(k) is not None:
      ids[k] = hf[k]
  fields.update(
      num_prebuffer_layers=extra, num_llm_layers=total - extra, tie_word_embeddings=bool(tie),
      rope_theta_hw=float(llm.get("rope_theta_hw", 10_000.0)),
      max_position_embeddings_hw=llm.get("max_position_embeddings_hw", 10000),
      vision_hidden=vis.get("hidden_size", 1024), patch_size=vis.get("patch_size", 16),
      downsample=int(round(1 / ratio)),
      rope_theta_vision=float(vis.get("rope_theta_vision", 10_000.0)),
      max_position_embeddings_vision=vis.get("max_position_embeddings_vision", 10000),
      **ids)
  fields.update(overrides)
  return config_lib.get_model_config(base, **fields)


def token_ids_from_tokenizer(directory: str) -> dict:
  """``{img_context_token_id, img_start_token_id, img_end_token_id}`` found in
  ``tokenizer.json`` / ``tokenizer_config.json`` / ``added_tokens.json`` of
  ``directory`` (missing entries are left out)."""
  names = {"<IMG_CONTEXT>": "img_context_token_id", "<img>": "img_start_token_id",
           "</img>": "img_end_token_id"}
  found = {}
  p = os.path.join(directory, "tokenizer.json")
  if os.path.isfile(p):
    for t in read_json(p).get("added_tokens", []):
      if t.get("content") in names:
        found[names[t["content"]]] = t["id"]
  p = os.path.join(directory, "tokenizer_config.json")
  if os.path.isfile(p):
    for i, t in read_json(p).get("added_tokens_decoder", {}).items():
      if t.get("content") in names:
        found.setdefault(names[t["content"]], int(i))
  p = os.path.join(directory, "added_tokens.json")
  if os.path.isfile(p):
    for tok, i in read_json(p).items():
      if tok in names:
        found.setdefault(names[tok], int(i))
  return found


def to_release_config(cfg: ml_collections.ConfigDict, *, vocab_size: int | None = None,
                      torch_dtype: str = "bfloat16", min_pixels: int = 65536,
                      max_pixels: int = 4194304, bos_token_id: int = QWEN3_BOS_TOKEN_ID,
                      eos_token_id: int = QWEN3_EOS_TOKEN_ID) -> dict:
  """The release ``config.json`` (docs/design.md §5.2) for our config.

  Args:
    cfg: our model config.
    vocab_size: exported vocabulary rows (default ``cfg.vocab_size``).
    torch_dtype: dtype name written into the config ("bfloat16" / "float32").
    min_pixels / max_pixels: the vision preprocessing bounds the evaluation
      code reads from ``vision_config``.
    bos_token_id / eos_token_id: Qwen3's ids.

  Returns:
    A JSON-serialisable dict.
  """
  total = config_lib.num_layers(cfg)
  vocab = vocab_size or cfg.vocab_size
  llm = {
      "architectures": ["Qwen3ForCausalLM"],
      "model_type": "qwen3",
      "attention_bias": False,
      "attention_dropout": 0.0,
      "bos_token_id": bos_token_id,
      "eos_token_id": eos_token_id,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "hidden_size": cfg.hidden_size,
      "initializer_range": cfg.init_std,
      "intermediate_size": cfg.intermediate_size,
      "layer_types": ["full_attention"] * total,
      "max_position_embeddings": cfg.max_position_embeddings,
      "max_window_layers": total,
      "num_attention_heads": cfg.num_heads,
      "num_hidden_layers": total,
      "num_key_value_heads": cfg.num_kv_heads,
      "rms_norm_eps": cfg.rms_norm_eps,
      "rope_scaling": None,
      "rope_theta": cfg.rope_theta,
      "sliding_window": None,
      "use_sliding_window": False,
      "tie_word_embeddings": bool(cfg.tie_word_embeddings),
      "torch_dtype": torch_dtype,
      "use_cache": True,
      "vocab_size": vocab,
      "rope_theta_hw": cfg.rope_theta_hw,
      "max_position_embeddings_hw": cfg.max_position_embeddings_hw,
      "extra_num_layers": cfg.num_prebuffer_layers,
  }
  vision = {
      "architectures": ["NEOVisionModel"],
      "model_type": "neo_vision",
      "hidden_size": cfg.vision_hidden,
      "llm_hidden_size": cfg.hidden_size,
      "patch_size": cfg.patch_size,
      "downsample_ratio": 1.0 / cfg.downsample,
      "rope_theta_vision": cfg.rope_theta_vision,
      "max_position_embeddings_vision": cfg.max_position_embeddings_vision,
      "num_channels": cfg.num_channels,
      "min_pixels": min_pixels,
      "max_pixels": max_pixels,
      "torch_dtype": torch_dtype,
  }
  return {
      "architectures": ["NEOChatModel"],
      "model_type": "neo_chat",
      "auto_map": {
          "AutoConfig": "configuration_neo_chat.NEOChatConfig",
          "AutoModel": "modeling_neo_chat.NEOChatModel",
          "AutoModelForCausalLM": "modeling_neo_chat.NEOChatModel",
      },
      "vision_config": vision,
      "llm_config": llm,
      "downsample_ratio": 1.0 / cfg.downsample,
      "template": "neo1_0",
      "img_start_token_id": cfg.img_start_token_id,
      "img_context_token_id": cfg.img_context_token_id,
      "img_end_token_id": cfg.img_end_token_id,
      "tie_word_embeddings": bool(cfg.tie_word_embeddings),
      "torch_dtype": torch_dtype,
      "use_backbone_lora": 0,
      "use_llm_lora": 0,
  }
