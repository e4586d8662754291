"""Shared pieces of the training configs (big_vision style).

``base_config(preset)`` returns the full schema of a training run; the
per-model files fill in sizes and the recipe of NEO_SPEC §4. Any field can be
overridden on the command line: ``--config.train.lr=1e-4``.
"""

from __future__ import annotations

import ml_collections

from neo_jax.model import config as model_config
from neo_jax.train import sharding


def base_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  """The schema of a training run, with the model of ``preset``.

  Top-level fields: ``model`` (model schema, ``neo_jax/model/config.py``),
  ``data`` (data pipeline; ``kind`` = "pipeline" | "random"), ``seq_len``
  [tokens per packed sequence], ``batch_size`` [sequences per global step],
  ``train`` (optimizer and schedule), ``mesh`` / ``dcn_mesh`` (axis sizes,
  -1 = fill), ``sharding_rules`` (logical axis -> mesh axes), ``checkpoint``,
  ``log_every`` / ``eval_every`` [steps], ``peak_flops_per_device`` [FLOP/s;
  0 = measure], ``avg_visible_keys`` (for MFU; 0 = seq_len / 4).
  """
  c = ml_collections.ConfigDict()
  c.model = model_config.get_model_config(preset)
  c.data = ml_collections.ConfigDict({"kind": "random"})
  c.seq_len = 256
  c.batch_size = 8

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 100
  c.train.lr = 5e-5
  c.train.warmup_steps = 0
  c.train.warmup_ratio = 0.01
  c.train.min_lr_ratio = 0.1
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.eps = 1e-8
  c.train.weight_decay = 0.01
  c.train.grad_clip = 1.0
  c.train.grad_accum_steps = 1
  c.train.trainable = "all"
  c.train.weight_decay_mask = "norms_and_biases"
  c.train.loss_normalization = "global"
  c.train.seed = 0
  # Faults (README "When things fail"): [s] from a preemption notice to the forced end
  # when no save is possible; [s] until the others leave after a process died.
  c.train.signal_grace_s = 30.0
  c.train.peer_timeout_s = 30.0

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "context": 1})
  c.dcn_mesh = ml_collections.ConfigDict()
  c.sharding_rules = [list(r) for r in sharding.DEFAULT_RULES]

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 100
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True
  c.checkpoint.init_from = ""
  c.checkpoint.restore_step = 0    # 0 = the newest readable checkpoint

  c.log_every = 10
  c.eval_every = 0
  c.eval = ml_collections.ConfigDict({"max_new_tokens": 4, "limit_per_task": 100, "batch_size": 32})
  c.peak_flops_per_device = 0.0
  c.avg_visible_keys = 0
  c.tensorboard = True
  # jax.profiler trace of steps start_step .. start_step + num_steps - 1 (0 = off).
  c.profile = ml_collections.ConfigDict({"start_step": 0, "num_steps": 3})
  return c


# NEO_SPEC §4: stage -> (trainable set, peak LR, sequence length).
STAGES = {
    "stage1": dict(trainable="stage1", lr=8e-4, seq_len=16384),
    "stage2": dict(trainable="all", lr=5e-5, seq_len=16384),
    "stage3": dict(trainable="all", lr=5e-5, seq_len=36864),
}


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses a config argument ``"stage2,seq_len=8192"`` into a ConfigDict.

  Bare words set ``stage``; ``key=value`` pairs are cast to the type of the default.

  Raises:
    ValueError: a key that has no default.
  """
  out = ml_collections.ConfigDict(defaults)
  for part in (arg or "").split(","):
    part = part.strip()
    if not part:
      continue
    if "=" not in part:
      out.stage = part
      continue
    k, v = part.split("=", 1)
    if k not in out:
      raise ValueError(f"Unknown config argument {k!r}; known: {sorted(out.keys())}.")
    out[k] = type(out[k])(v) if not isinstance(out[k], bool) else v.lower() in ("1", "true", "yes")
  return out


def recipe_config(preset: str, arg: str | None, *, ov: bool) -> ml_collections.ConfigDict:
  """A released-size training config for one stage of NEO_SPEC §4.

  Args:
    preset: model preset ("neo_2b", "neo_9b", "neo_ov_2b", "neo_ov_9b").
    arg: "stage1" | "stage2" | "stage3" [+ ",batch_size=...", ",data=mix.yaml" (the data
      mixture file, required: data/mixture.py)].
    ov: NEO-ov recipe (stage-1 LR 2e-4, video in the mixture, 36K stage 3).

  Raises:
    ValueError: unknown stage.
  """
  a = parse_arg(arg, stage="stage2", batch_size=128, data="")
  if a.stage not in STAGES:
    raise ValueError(f"Unknown stage {a.stage!r}; choose one of {sorted(STAGES)}.")
  st = dict(STAGES[a.stage])
  if ov and a.stage == "stage1":
    st["lr"] = 2e-4
  if not ov and a.stage == "stage3":
    st["seq_len"] = 18432  # NEO's SFT context in the release
  c = base_config(preset)
  c.model.dtype = "bfloat16"
  # The fastest policy that fits NEO-ov 9B stage 3 at 36K on v5p-256 (BUILD_NOTES §0g):
  # no attention recompute, 42.7% of HBM; "none" needs 107%.
  c.model.remat_policy = "minimal_flash"
  c.model.attention_impl = "auto"
  c.model.max_supervised_tokens = 4096
  c.seq_len = st["seq_len"]
  c.batch_size = a.batch_size
  c.train.trainable = st["trainable"]
  c.train.lr = st["lr"]
  c.train.warmup_steps = 1000
  c.train.num_steps = 100_000
  c.data = embedded_data_config()
  # Released sizes train on the user's data: a mixture file is required (data=...).
  c.data.mixture = a.data
  c.data.require_mixture = True
  # Stage data defaults (NEO_SPEC §3.2, §4): pre-training 256^2..2048^2 pixels; mid-training
  # and SFT up to 4096^2; NEO-ov videos up to 128 frames and text : image : multi-image :
  # video = 2 : 4 : 1 : 1 for mixture sources that give a modality and no weight.
  c.data.options.min_pixels = 65536
  c.data.options.max_pixels = 4194304 if a.stage == "stage1" else 16777216
  c.data.options.video_max_pixels = c.data.options.max_pixels
  if ov:
    c.data.options.max_frames = 128
    c.data.modality_weights = ml_collections.ConfigDict(
        {"text": 2.0, "image": 4.0, "multi_image": 1.0, "video": 1.0})
  # The patch embedder's 2D RoPE base, stated per recipe: the release's config class
  # default (10000); its training-argument default is 1000 (NEO_SPEC §1.1).
  c.model.rope_theta_vision = 10_000.0
  c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1, "context": 1})
  c.checkpoint.every_steps = 1000
  c.log_every = 10
  return c


def embedded_data_config() -> ml_collections.ConfigDict:
  """The data part of a config: the pipeline's defaults (the embedded data set)."""
  from neo_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  d = pipeline.default_data_config()
  d.kind = "pipeline"
  return d
