"""Shared pieces of the training configs (big_vision style).

``base_config(preset)`` returns the full schema of a training run; the
per-model files fill in sizes and the recipe (``recipe_config``, values in
``neo_jax/configs/recipe_values.py``). Any field can be
overridden on the command line: ``--config.train.lr=1e-4``.
"""

from __future__ import annotations

import ml_collections

from neo_jax.configs import recipe_values
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
  # Context phases [[start step (or fraction of num_steps), seq_len], ...]; empty = seq_len
  # throughout (neo_jax/core/context_schedule.py); the last length must equal seq_len.
  c.seq_len_schedule = ()
  c.batch_size = 8

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 100
  c.train.lr = 5e-5
  c.train.warmup_steps = 0
  c.train.warmup_ratio = 0.01
  c.train.lr_schedule = "warmup_cosine"  # | "cosine_with_min_lr" | "cosine" (optimizer.py)
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
  # Axis sizes across slices (DCN), multiplying to the number of slices; all 1 = one slice.
  # Multislice: e.g. --config.dcn_mesh.data=2 (data parallel across 2 slices).
  c.dcn_mesh = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1, "context": 1})
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
  """A released-size training config for one stage (values: ``recipe_values.py``).

  Args:
    preset: model preset ("neo_2b", "neo_9b", "neo_ov_2b", "neo_ov_9b"); NEO 9B is the
      release's 8B scripts.
    arg: "stage1" | "stage2" | "stage3", then optionally ",values=release|paper" (NEO: the
      authors' scripts, default, or the paper's values where they differ; NEO-ov: paper
      only), ",devices=N" (data-parallel devices, the mesh's data x fsdp; default 128, the
      paper's 16 x 8 GPUs: one packed row per device and micro-step, so
      ``grad_accum_steps = rows / N``), ",batch_size=R" (global batch in rows; 0 = the
      recipe's), ",data=mix.yaml" (the data mixture file, required: data/mixture.py).
    ov: NEO-ov recipe (video in the mixture).

  Raises:
    ValueError: unknown stage or value set; rows not a multiple of ``devices`` x rows per
      device.
  """
  a = parse_arg(arg, stage="stage2", batch_size=0, data="", values="paper" if ov else "release",
                devices=0)
  size = "8B" if "9b" in preset else "2B"
  v = recipe_values.values(size, a.stage, a["values"], ov=ov)
  devices = a.devices or v["devices"]
  rows = a.batch_size or v["rows"]
  per_step = devices * v["rows_per_device"]
  if devices <= 0 or rows % per_step:
    raise ValueError(f"batch_size={rows} rows is not a multiple of devices={devices} x "
                     f"{v['rows_per_device']} row(s) per device and micro-step; pass "
                     f"devices=N (the run's data x fsdp devices) or batch_size=R.")
  c = base_config(preset)
  c.model.dtype = "bfloat16"
  # The fastest policy that fits NEO-ov 9B stage 3 at 36K on v5p-256 (BUILD_NOTES §0g):
  # no attention recompute, 42.7% of HBM; "none" needs 107%.
  c.model.remat_policy = "minimal_flash"
  c.model.attention_impl = "auto"
  c.model.max_supervised_tokens = 4096
  c.seq_len = v["seq_len"]
  c.seq_len_schedule = tuple(tuple(x) for x in v["seq_len_schedule"])
  c.batch_size = rows
  c.train.grad_accum_steps = rows // per_step
  for k in ("trainable", "lr", "lr_schedule", "min_lr_ratio", "warmup_steps", "warmup_ratio",
            "num_steps", "weight_decay", "b1", "b2", "eps", "grad_clip"):
    c.train[k] = v[k]
  c.data = embedded_data_config()
  # Released sizes train on the user's data: a mixture file is required (data=...).
  c.data.mixture = a.data
  c.data.require_mixture = True
  # Stage data defaults (docs/design.md §3.2, §4): pre-training 256^2..2048^2 pixels; mid-training
  # and SFT up to 4096^2; NEO-ov videos up to 128 frames and text : image : multi-image :
  # video = 2 : 4 : 1 : 1 for mixture sources that give a modality and no weight.
  c.data.options.min_pixels = v["min_pixels"]
  c.data.options.max_pixels = v["max_pixels"]
  c.data.options.video_max_pixels = c.data.options.max_pixels
  if ov:
    c.data.options.max_frames = 128
    c.data.modality_weights = ml_collections.ConfigDict(
        {"text": 2.0, "image": 4.0, "multi_image": 1.0, "video": 1.0})
  # The patch embedder's 2D RoPE base: what the release's training code builds from scratch
  # (recipe_values.py), not its config class's default 10000.
  c.model.rope_theta_vision = v["rope_theta_vision"]
  if size == "2B" and c.seq_len >= 32768:
    # 34,816 tokens (NEO 2B stage 3), one row per chip on v5p-256: minimal_flash needs 103.2
    # of 95 GiB per device (temporaries grow with the row: 32,768 needs about 97), full 17.7
    # GiB (AOT, BUILD_NOTES.md §0i). So NEO 2B stages 2-3 and NEO-ov 2B at 36,864 (its
    # stage 3 and the last phase of stage 2) recompute everything.
    c.model.remat_policy = "full"
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
