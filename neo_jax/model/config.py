"""The model config's user layer: a ``ConfigDict`` of ``ModelConfig``'s fields, and the
released NEO / NEO-ov sizes.

The schema is an ``ml_collections.ConfigDict`` so that big_vision-style config
files can override any field from the command line
(``--config.model.num_prebuffer_layers=4``). Its fields, types, units and defaults
are ``ModelConfig``'s (``model/model_config.py``, the one place they are written);
the edges turn the ``ConfigDict`` into a ``ModelConfig`` once
(``ModelConfig.from_config_dict``), which the Flax modules take.

Sizes: docs/design.md §1.6 (NEO paper Table 1, the release's ``config.json`` files).
"""

from __future__ import annotations

import ml_collections

from neo_jax.model.model_config import ModelConfig


def base_config() -> ml_collections.ConfigDict:
  """The full schema with NEO-2B values: ``ModelConfig()``'s fields as a ``ConfigDict``
  (field documentation: ``ModelConfig``)."""
  return ml_collections.ConfigDict(ModelConfig().to_dict())


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


def validate(c) -> ModelConfig:
  """Checks a model config (``ConfigDict`` or ``ModelConfig``) and returns it typed.

  Raises:
    ValueError: an unknown key, or a field ``ModelConfig`` rejects (the message names
      it: head_dim not divisible by 4, heads not a multiple of kv heads, an unknown
      enum value, ...).
  """
  return ModelConfig.coerce(c)


def num_layers(c) -> int:
  """Total decoder layers (pre-Buffer + post-LLM), the exported num_hidden_layers."""
  return c.num_prebuffer_layers + c.num_llm_layers
