"""``ModelConfig``: the model's typed, frozen configuration (defaults in one place).

The user layer is an ``ml_collections.ConfigDict`` (``model/config.py``: presets, the
recipes in ``neo_jax/configs/``, ``--config.model.FIELD=...`` overrides, sweeps). At
the edges (``train/setup.py``, the CLIs, conversion, evaluation) it becomes a
``ModelConfig`` once (``ModelConfig.from_config_dict``): unknown keys and bad values
raise a ``ValueError`` naming the field, and the Flax modules of ``neo_jax/model/``
read typed attributes, never ``.get(name, default)``.

This module imports no JAX (the recipes validate their model before a CLI has set up
the platform). Sizes of the released models: docs/design.md §1.6.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Mapping

from neo_jax.core import geometry
from neo_jax.core.tokens import (IMG_CONTEXT_TOKEN_ID, IMG_END_TOKEN_ID, IMG_START_TOKEN_ID,
                                 QWEN3_VOCAB_SIZE)
from neo_jax.ops.impls import ATTENTION_IMPLS

# The enumerations of the config, each the one list its field is checked against.
ATTENTION_MASKS = ("mixed", "causal")       # NEO's mixed mask | plain causal (Table 3 ablation)
ROPE_MODES = ("native", "1d", "mrope")     # model/positions.py
# "none" = no remat; the others name ``layers.REMAT_POLICIES`` (what each saves).
REMAT_POLICIES = ("none", "full", "minimal", "minimal_flash", "save_qkv_attn", "dots")
LOSS_WEIGHTINGS = ("token", "sample", "square")  # w(n) of docs/design.md §3.5
DTYPES = ("float32", "bfloat16", "float16", "float64")
# The scanned decoder stacks of ``NEO`` in the release's layer order (parameters under
# ``<stack>/layers``, the layer axis first; ``stack_layers``).
STACKS = ("prebuffer", "llm")
# Fields kept for the Hugging Face export and read back from older run / checkpoint
# configs, but fixed: the patch embedder, the batch layout (``core/batch.py``) and the
# data pipeline's resizing all use the release's 2x2 patches per token and RGB
# (``core/geometry.py``).
FIXED = {"downsample": geometry.DOWNSAMPLE, "num_channels": geometry.NUM_CHANNELS}

_ENUMS = {"attention_mask": ATTENTION_MASKS, "rope_mode": ROPE_MODES,
          "remat_policy": REMAT_POLICIES, "attention_impl": ATTENTION_IMPLS,
          "loss_weighting": LOSS_WEIGHTINGS, "dtype": DTYPES, "param_dtype": DTYPES}
# Fields that must be > 0; the other int fields must be >= 0 (0 = off / no cap).
_POSITIVE = ("vocab_size", "hidden_size", "intermediate_size", "num_llm_layers", "num_heads",
             "num_kv_heads", "head_dim", "vision_hidden", "patch_size", "attention_block_q",
             "attention_block_kv", "loss_vocab_chunk", "max_position_embeddings",
             "max_position_embeddings_hw", "max_position_embeddings_vision")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """The NEO / NEO-ov model's configuration; the defaults are NEO-2B's.

  Frozen and hashable (a static argument of ``jax.jit``); ``replace(**fields)`` makes a
  changed copy. Units in brackets.

  Raises (on construction):
    ValueError: a field of the wrong type, out of range, not one of its enumeration,
      or inconsistent with another; the message names the field and what to set.
  """
  # Vocabulary and widths.
  vocab_size: int = QWEN3_VOCAB_SIZE    # [rows] of embed_tokens / lm_head
  # A compact vocabulary: row r holds token id vocab_ids[r] (strictly increasing,
  # vocab_size of them; model/compact_vocab.py). () = row r is token id r.
  vocab_ids: tuple = ()
  hidden_size: int = 2048               # LLM width D
  intermediate_size: int = 6144         # MLP width I
  num_llm_layers: int = 28              # post-LLM layers (the Qwen3 layers)
  num_prebuffer_layers: int = 12        # pre-Buffer layers (the release's "extra_num_layers")
  num_heads: int = 16                   # query heads Hq
  num_kv_heads: int = 8                 # key / value heads Hkv (GQA when < Hq)
  head_dim: int = 128                   # d, per head and branch (T; H and W get d / 2 each)
  rms_norm_eps: float = 1e-6            # epsilon of every RMSNorm
  # Positions (docs/design.md §1.3).
  rope_theta: float = 1_000_000.0       # base of the T-branch RoPE (rotate_half convention)
  rope_theta_hw: float = 10_000.0       # base of the H / W branch RoPE (head_dim / 2 channels)
  rope_theta_vision: float = 10_000.0   # base of the patch embedder's interleaved 2D RoPE
  # "mixed" (NEO: bidirectional inside an image) | "causal" (images causal too; the
  # NEO paper's Table 3 ablation). Only "native" + "mixed" export to the release.
  attention_mask: str = "mixed"
  # "native" (T/H/W Native-RoPE) | "1d" (one running position per token, H/W at 0) |
  # "mrope" (Qwen2-VL's multimodal RoPE on the T branch, H/W branches off).
  rope_mode: str = "native"
  max_position_embeddings: int = 40960         # [tokens] written into exported configs only
  max_position_embeddings_hw: int = 10000      # idem, H / W branches
  max_position_embeddings_vision: int = 10000  # idem, patch embedder
  tie_word_embeddings: bool = True      # lm_head shares embed_tokens
  # Patch embedder (docs/design.md §1.1).
  vision_hidden: int = 1024             # channels V of patch_embedding
  patch_size: int = geometry.PATCH_SIZE      # [pixels] side of a patch (16)
  downsample: int = geometry.DOWNSAMPLE      # patches per visual-token side; fixed (FIXED)
  num_channels: int = geometry.NUM_CHANNELS  # image channels; fixed (FIXED)
  img_context_token_id: int = IMG_CONTEXT_TOKEN_ID  # one per visual token
  img_start_token_id: int = IMG_START_TOKEN_ID
  img_end_token_id: int = IMG_END_TOKEN_ID
  # Precision and memory.
  dtype: str = "bfloat16"               # compute dtype (DTYPES)
  param_dtype: str = "float32"          # parameter storage dtype
  # "none" | "full" | "minimal" (save projections) | "minimal_flash" (minimal + the
  # kernel's output and logsumexp: no attention recompute) | "save_qkv_attn" | "dots".
  remat_policy: str = "minimal"
  # "auto" (the Pallas kernel on TPU, xla_blockwise elsewhere) | "xla_blockwise" |
  # "pallas" | "xla" (the dense reference, the tests' oracle). ops/impls.py.
  attention_impl: str = "auto"
  attention_block_q: int = 512          # [tokens] kernel query block
  attention_block_kv: int = 512         # [tokens] kernel key / value block
  # [tokens] the longest packed sample, 0 = the sequence length: the packer drops longer
  # samples (counted skip ``too_long``), the trainer refuses a batch holding one, and the
  # TPU kernel sizes its grid's step axis by it (ops/block_ranges.kv_step_bound).
  max_sample_tokens: int = 0
  # [tokens per sequence] static number of visual positions the patch embedder runs on
  # (model/visual_gather.py); 0 = every position. A row with more gets NaN embeddings.
  max_visual_tokens: int = 0
  # Loss (docs/design.md §3.5 / §3.6).
  loss_vocab_chunk: int = 16384         # [rows] vocabulary chunk of the chunked LM head + CE
  max_supervised_tokens: int = 0        # [tokens per sequence] gathered before the head; 0 = all
  loss_weighting: str = "square"        # "token" | "sample" | "square"
  init_std: float = 0.02                # std of the N(0, std) initialisers (the release's)

  def __post_init__(self):
    for f in dataclasses.fields(self):
      object.__setattr__(self, f.name, _typed(f.name, f.type, getattr(self, f.name)))
    for name, allowed in _ENUMS.items():
      if getattr(self, name) not in allowed:
        raise ValueError(f"model.{name}={getattr(self, name)!r} is not one of {allowed}.")
    for name, want in FIXED.items():
      if getattr(self, name) != want:
        raise ValueError(
            f"model.{name}={getattr(self, name)} is not supported: the patch embedder, the "
            f"batch layout (core/batch.py) and the data pipeline use the release's fixed "
            f"value {want} (core/geometry.py); remove the override.")
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if isinstance(v, int) and not isinstance(v, bool):
        low = 1 if f.name in _POSITIVE else 0
        if v < low:
          raise ValueError(f"model.{f.name}={v} must be >= {low}"
                           + (" (0 = off / no cap)." if low == 0 else "."))
    self._check_vocab_ids()
    if self.rms_norm_eps <= 0 or self.init_std < 0:
      raise ValueError(f"model.rms_norm_eps={self.rms_norm_eps} must be > 0 and "
                       f"model.init_std={self.init_std} >= 0.")
    if self.head_dim % 4:
      raise ValueError(f"model.head_dim={self.head_dim} must be divisible by 4 (H/W halves "
                       "are rotated in pairs).")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"model.num_heads={self.num_heads} must be a multiple of "
                       f"model.num_kv_heads={self.num_kv_heads}.")
    if self.vision_hidden % 4:
      raise ValueError(f"model.vision_hidden={self.vision_hidden} must be divisible by 4 "
                       "(two 2D-RoPE halves rotated in pairs).")

  def _check_vocab_ids(self) -> None:
    """Raises ``ValueError`` for a compact vocabulary that is not strictly increasing,
    not ``vocab_size`` long, or without a row for an image token id."""
    ids = self.vocab_ids
    if not ids:
      return
    if len(ids) != self.vocab_size:
      raise ValueError(f"model.vocab_ids lists {len(ids)} ids but model.vocab_size="
                       f"{self.vocab_size}; set vocab_size to len(vocab_ids).")
    if ids[0] < 0 or any(b <= a for a, b in zip(ids, ids[1:])):
      raise ValueError("model.vocab_ids must be non-negative and strictly increasing "
                       "(sorted, no repeats).")
    image_ids = (self.img_context_token_id, self.img_start_token_id, self.img_end_token_id)
    missing = sorted(set(image_ids) - set(ids))
    if missing:
      raise ValueError(f"model.vocab_ids has no row for the image token ids {missing}; add "
                       "them.")

  @property
  def num_layers(self) -> int:
    """Decoder layers, pre-Buffer + post-LLM (the exported ``num_hidden_layers``)."""
    return self.num_prebuffer_layers + self.num_llm_layers

  @property
  def stack_layers(self) -> dict[str, int]:
    """``{stack: layers}`` of the scanned decoder stacks, in the release's layer order:
    ``prebuffer`` (only when it has layers), then ``llm``. ``NEO`` builds these stacks;
    the KV cache (``infer/kv_cache.py``) has one entry per layer of each."""
    n = dict(zip(STACKS, (self.num_prebuffer_layers, self.num_llm_layers)))
    return {s: n[s] for s in STACKS if n[s] or s == "llm"}

  def replace(self, **fields) -> "ModelConfig":
    """A copy with ``fields`` changed (validated again).

    Raises:
      ValueError: a name that is no field, or a value ``__post_init__`` rejects.
    """
    _check_keys(fields)
    return dataclasses.replace(self, **fields)

  def to_dict(self) -> dict[str, Any]:
    """``{field: value}`` (plain Python values: JSON, a ``ConfigDict``)."""
    return dataclasses.asdict(self)

  @classmethod
  def field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))

  @classmethod
  def from_config_dict(cls, config: Mapping[str, Any]) -> "ModelConfig":
    """The ``ModelConfig`` of a model ``ConfigDict`` (or any mapping, e.g. a run's
    ``config.json`` ``model`` entry); fields it lacks take their defaults.

    Raises:
      ValueError: a key that is no field (the message lists them and the fields), or
        any ``__post_init__`` error.
    """
    keys = list(config.keys())
    _check_keys(keys)
    return cls(**{k: config[k] for k in keys})

  @classmethod
  def coerce(cls, config: "ModelConfig | Mapping[str, Any]") -> "ModelConfig":
    """``config`` itself when it is a ``ModelConfig``, else ``from_config_dict``."""
    return config if isinstance(config, cls) else cls.from_config_dict(config)


def _check_keys(keys) -> None:
  """Raises ``ValueError`` naming the keys that are no ``ModelConfig`` field."""
  names = ModelConfig.field_names()
  unknown = sorted(set(keys) - set(names))
  if unknown:
    raise ValueError(f"Unknown model config keys {unknown}: remove them or correct the "
                     f"spelling; the fields are {sorted(names)}.")


def _typed(name: str, kind: str, value: Any) -> Any:
  """``value`` as the field type ``kind`` ("int", "float", "bool", "str", "tuple" of ints):
  integers for a float field become floats, a list for a tuple field a tuple; anything
  else of the wrong type raises ``ValueError``."""
  if kind == "bool":
    ok = isinstance(value, bool)
  elif kind == "int":
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    value = int(value) if ok else value
  elif kind == "float":
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    value = float(value) if ok else value
  elif kind == "tuple":   # of ints (vocab_ids); a list (JSON) becomes a tuple
    ok = (isinstance(value, (list, tuple)) and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value))
    value = tuple(int(v) for v in value) if ok else value
  else:
    ok = isinstance(value, str)
  if not ok:
    raise ValueError(f"model.{name}={value!r} must be of type {kind}, not {type(value).__name__}.")
  return value
