"""``ModelConfig``: typed, frozen, validated, defaults in one place; the shapes every
consumer reads come from the model.

The expected shapes and counts are written here from the NEO-2B / NEO-9B sizes of
docs/design.md §1.6 (the release's ``config.json`` values), not computed by the code
under test.
"""

import dataclasses

import pytest

from neo_jax.core import geometry
from neo_jax.model import config as config_lib
from neo_jax.model import model_config as mc
from neo_jax.model.model_config import ModelConfig


def test_the_config_dict_is_the_dataclass_defaults():
  assert config_lib.base_config().to_dict() == ModelConfig().to_dict()
  assert set(ModelConfig().to_dict()) == set(ModelConfig.field_names())
  for name in config_lib.PRESETS:
    cd = config_lib.get_model_config(name)
    assert ModelConfig.from_config_dict(cd).to_dict() == cd.to_dict(), name


def test_frozen_and_hashable():
  a = ModelConfig.from_config_dict(config_lib.get_model_config("tiny"))
  b = ModelConfig.from_config_dict(config_lib.get_model_config("tiny"))
  assert a == b and hash(a) == hash(b) and a != a.replace(num_llm_layers=3)
  with pytest.raises(dataclasses.FrozenInstanceError):
    a.hidden_size = 8  # type: ignore[misc]


@pytest.mark.parametrize("fields, says", [
    ({"hidden_sise": 64}, r"Unknown model config keys \['hidden_sise'\]"),
    ({"head_dim": 18}, "model.head_dim=18 must be divisible by 4"),
    ({"num_heads": 6, "num_kv_heads": 4}, "model.num_heads=6 must be a multiple"),
    ({"vision_hidden": 30}, "model.vision_hidden=30"),
    ({"remat_policy": "some"}, "model.remat_policy='some' is not one of"),
    ({"attention_impl": "flash"}, "model.attention_impl='flash' is not one of"),
    ({"rope_mode": "2d"}, "model.rope_mode='2d'"),
    ({"attention_mask": "full"}, "model.attention_mask='full'"),
    ({"loss_weighting": "mean"}, "model.loss_weighting='mean'"),
    ({"dtype": "int8"}, "model.dtype='int8'"),
    ({"downsample": 4}, "model.downsample=4 is not supported"),
    ({"num_channels": 1}, "model.num_channels=1 is not supported"),
    ({"max_visual_tokens": -1}, "model.max_visual_tokens=-1 must be >= 0"),
    ({"num_llm_layers": 0}, "model.num_llm_layers=0 must be >= 1"),
    ({"hidden_size": 64.0}, "model.hidden_size=64.0 must be of type int"),
    ({"tie_word_embeddings": 1}, "model.tie_word_embeddings=1 must be of type bool"),
])
def test_bad_fields_raise_naming_the_field(fields, says):
  cd = config_lib.get_model_config("tiny").to_dict()
  cd.update(fields)
  with pytest.raises(ValueError, match=says):
    ModelConfig.from_config_dict(cd)


def test_integers_for_float_fields_become_floats():
  c = ModelConfig(rope_theta=1_000_000, init_std=0)
  assert type(c.rope_theta) is float and c.rope_theta == 1e6 and type(c.init_std) is float


def test_enumerations_are_defined_once():
  from neo_jax.model import layers  # pylint: disable=import-outside-toplevel
  from neo_jax.ops import backend, impls  # pylint: disable=import-outside-toplevel
  assert set(layers.REMAT_POLICIES) | {"none"} == set(mc.REMAT_POLICIES)
  assert backend.ATTENTION_IMPLS is impls.ATTENTION_IMPLS is mc.ATTENTION_IMPLS
  assert {backend.resolve_attention_impl(i, "cpu") for i in mc.ATTENTION_IMPLS} == {
      "xla", "xla_blockwise", "pallas"}


def test_the_model_takes_the_typed_config():
  from neo_jax.model.neo import NEO  # pylint: disable=import-outside-toplevel
  cd = config_lib.get_model_config("tiny")
  assert NEO(cd).config == ModelConfig.from_config_dict(cd)
  with pytest.raises(ValueError, match="Unknown model config keys"):
    NEO({**cd.to_dict(), "extra": 1})


def test_patch_layout_is_the_release_one():
  # docs/design.md §1.1: 2x2 patches of 16x16 RGB per visual token, (dy, dx) row-major.
  assert geometry.token_pixels_shape() == (4, 3 * 16 * 16)
  assert geometry.patch_offsets() == ((0, 0, 1, 1), (0, 1, 0, 1))


def test_conversion_shapes_come_from_the_model_and_match_the_release():
  from neo_jax.convert import param_mapping as pm  # pylint: disable=import-outside-toplevel
  cfg = ModelConfig()  # NEO-2B: D 2048, I 6144, 16 / 8 heads of 128, V 1024, 12 + 28 layers
  layer = pm.layer_shapes(cfg)
  assert layer[("self_attn", "q_proj", "kernel")] == (2048, 16, 128)
  assert layer[("self_attn", "k_proj_hw", "kernel")] == (2048, 8, 128)
  assert layer[("self_attn", "o_proj", "kernel")] == (16, 128, 2048)
  assert layer[("self_attn", "q_norm_h", "scale")] == (64,)
  assert layer[("mlp", "down_proj", "kernel")] == (6144, 2048)
  assert len(layer) == 17
  assert pm.global_shapes(cfg) == {
      ("vision_model", "patch_embedding", "kernel"): (768, 1024),
      ("vision_model", "patch_embedding", "bias"): (1024,),
      ("vision_model", "dense_embedding", "kernel"): (4096, 2048),
      ("vision_model", "dense_embedding", "bias"): (2048,),
      ("embed_tokens", "embedding"): (151936, 2048),
      ("norm", "scale"): (2048,)}   # tied: no lm_head
  assert pm.stack_sizes(cfg) == {"prebuffer": (12, 0), "llm": (28, 12)}
  assert pm.stack_sizes(cfg.replace(num_prebuffer_layers=0)) == {"llm": (28, 0)}


def test_a_model_parameter_missing_from_the_table_raises(monkeypatch):
  from neo_jax.convert import param_mapping as pm  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(pm, "GLOBAL_ENTRIES", tuple(e for e in pm.GLOBAL_ENTRIES
                                                  if e.path != ("norm", "scale")))
  with pytest.raises(ValueError, match=r"no entry in convert/param_mapping.py: \['norm/scale'\]"):
    list(pm.leaves(config_lib.get_model_config("tiny")))


def test_flops_and_kv_cache_read_the_same_fields():
  from neo_jax.infer import kv_cache  # pylint: disable=import-outside-toplevel
  from neo_jax.train import flops  # pylint: disable=import-outside-toplevel
  d_model, inter, hq, hkv, d = 4096, 12288, 32, 8, 128   # NEO-9B
  cfg = ModelConfig.from_config_dict(config_lib.get_model_config("neo_9b"))
  want = d_model * hq * d * 2 + d_model * hkv * d * 3 + hq * d * d_model + 3 * d_model * inter
  assert flops.layer_matmul_params(cfg) == want
  shapes = kv_cache.cache_shapes(cfg, 2, 64)
  assert list(shapes) == ["prebuffer", "llm"]
  assert shapes["prebuffer"]["layers"]["self_attn"]["key"].shape == (6, 2, 64, hkv, 2 * d)
  assert shapes["llm"]["layers"]["self_attn"]["value"].shape == (36, 2, 64, hkv, d)
  assert list(kv_cache.cache_shapes(cfg.replace(num_prebuffer_layers=0), 1, 8)) == ["llm"]
