"""The value sets of the released-size recipes (``common.recipe_config``), each value cited.

* ``RELEASE``: NEO 2B / 8B (our ``neo_2b`` / ``neo_9b``), what the authors' training scripts
  run (EvolvingLMMs-Lab/NEO ``VLMTrainKit/scripts/{2B,8B}_{1PT,2MTsi,3SFTsi}.sh``; an
  option a script does not pass takes the default of ``VLMTrainKit/neo/train/argument.py``,
  transformers 4.57.1 and DeepSpeed). ``values=release``, the default.
* ``NEO_PAPER``: where the NEO paper's training recipe states a value that differs from the
  scripts, that value (``values=paper``); everything else stays the script's.
* ``NEO_OV_PAPER``: NEO-ov. The release ships no NEO-ov training scripts, so these are the
  NEO-ov paper's values (``values=paper``, the only set).

Fields: ``trainable`` (``optimizer.trainable_patterns``), ``lr`` (peak), ``lr_schedule``
(``optimizer.SCHEDULES``), ``min_lr_ratio``, ``warmup_steps`` (0 = use ``warmup_ratio``),
``warmup_ratio``, ``num_steps``, ``seq_len`` [tokens per packed row], ``rows`` (global batch
[packed rows per optimizer step]), ``rows_per_device`` [packed rows per device and
micro-step], ``devices`` (the data-parallel devices the rows were stated for),
``min_pixels`` / ``max_pixels`` [pixels per image], ``weight_decay``, ``b1`` / ``b2`` /
``eps`` (AdamW), ``grad_clip`` (global norm; 0 = off), ``rope_theta_vision`` (the patch
embedder's 2D RoPE base), ``seq_len_schedule`` (``[(start, seq_len)]`` phases, empty = one
length; ``neo_jax/core/context_schedule.py``).

The paper's 16 nodes x 8 GPUs = 128 devices: each script's comment "Global batch size =
batch_size * grad_accum_steps * num_gpus" (e.g. 2B_1PT.sh:23) with ``batch_size=64``
samples that its collator packs into one row (``data_processor.py:298-320``), so a device
takes one packed row per micro-step and ``rows = grad_accum_steps * 128``.
"""

from __future__ import annotations

PAPER_DEVICES = 128  # the paper's 16 nodes x 8 GPUs; the scripts run torchrun --nproc_per_node=8

# What every script shares: the AdamW defaults it does not pass, the gradient clipping that ran,
# and one packed row per device and micro-step on the paper's 128 devices.
_SHARED = dict(
    b1=0.9,      # not passed: argument.py:50 adam_beta1 = 0.9
    b2=0.95,     # not passed: argument.py:51 adam_beta2 = 0.95
    eps=1e-8,    # not passed: argument.py:52 adam_epsilon = 1e-8
    # not passed: argument.py:17 rope_theta_vision = 1000.0, used from scratch (build.py:40);
    # the config class's 10000 (configuration_neo_vit.py:17) is not what trained.
    rope_theta_vision=1000.0,
    # --max_grad_norm 1 (e.g. 2B_1PT.sh:63) never reaches DeepSpeed: zero2.json / zero3.json
    # have no "gradient_clipping" key; transformers fills only "auto" keys
    # (integrations/deepspeed.py:105-131, 158) and accelerate's DeepSpeed clip_grad_norm_
    # only reads the norm (accelerator.py:2872-2876), so DeepSpeed's default 0.0 (= off,
    # runtime/constants.py:246; zero/stage_1_and_2.py:2143) ran. BUILD_NOTES.md §0i.
    grad_clip=0.0,
    rows_per_device=1,
    devices=PAPER_DEVICES,
    seq_len_schedule=(),   # one length per stage: --max_seq_length
)

RELEASE = {
    "2B": {
        "stage1": dict(
            _SHARED,
            # --train_buffer True (2B_1PT.sh:48) asks for set_model's filter (train.py:28-48),
            # which the shipped train.py never calls (it would train everything): the filter
            # is what the script asks for. BUILD_NOTES.md §0i.
            trainable="release_stage1",
            lr=8e-4,                           # 2B_1PT.sh:22 lr=8e-4
            lr_schedule="cosine_with_min_lr",  # not passed: argument.py:53
            min_lr_ratio=0.1,                  # 2B_1PT.sh:62
            warmup_steps=1000,                 # 2B_1PT.sh:61
            warmup_ratio=0.0,                  # not passed: argument.py:55
            num_steps=200_000,                 # 2B_1PT.sh:49 --max_steps 200000
            seq_len=16384,                     # 2B_1PT.sh:65 --max_seq_length 16384
            rows=5 * PAPER_DEVICES,            # 2B_1PT.sh:24-25 batch_size=64 (one row), grad_accum_steps=5
            min_pixels=65536,                  # 2B_1PT.sh:54
            max_pixels=4194304,                # 2B_1PT.sh:53
            weight_decay=0.01,                 # 2B_1PT.sh:60
        ),
        "stage2": dict(
            _SHARED,
            trainable="all",                   # no --train_buffer (argument.py:26 False)
            lr=5e-5,                           # 2B_2MTsi.sh:18 lr=5e-5
            lr_schedule="cosine_with_min_lr",  # not passed: argument.py:53
            min_lr_ratio=0.2,                  # 2B_2MTsi.sh:58
            warmup_steps=0,                    # not passed: argument.py:56
            warmup_ratio=0.03,                 # 2B_2MTsi.sh:57 (ceil(0.03 * 50000) = 1500 steps)
            num_steps=50_000,                  # 2B_2MTsi.sh:45
            seq_len=32768,                     # 2B_2MTsi.sh:61 --max_seq_length 32768
            rows=2 * PAPER_DEVICES,            # 2B_2MTsi.sh:21-22 batch_size=64, grad_accum_steps=2
            min_pixels=65536,                  # 2B_2MTsi.sh:50
            max_pixels=16777216,               # 2B_2MTsi.sh:49
            weight_decay=0.01,                 # 2B_2MTsi.sh:56
        ),
        "stage3": dict(
            _SHARED,
            trainable="all",                   # no --train_buffer (argument.py:26 False)
            lr=6e-5,                           # 2B_3SFTsi.sh:18 lr=6e-5
            lr_schedule="cosine_with_min_lr",  # not passed: argument.py:53
            min_lr_ratio=0.1,                  # 2B_3SFTsi.sh:59
            warmup_steps=0,                    # not passed: argument.py:56
            warmup_ratio=0.03,                 # 2B_3SFTsi.sh:58 (ceil(0.03 * 4500) = 135 steps)
            num_steps=4_500,                   # 2B_3SFTsi.sh:46
            seq_len=34816,                     # 2B_3SFTsi.sh:62 --max_seq_length 34816
            rows=1 * PAPER_DEVICES,            # 2B_3SFTsi.sh:21-22 batch_size=64, grad_accum_steps=1
            min_pixels=65536,                  # 2B_3SFTsi.sh:51
            max_pixels=16777216,               # 2B_3SFTsi.sh:50
            weight_decay=0.01,                 # 2B_3SFTsi.sh:57
        ),
    },
    "8B": {
        "stage1": dict(
            _SHARED,
            trainable="release_stage1",        # 8B_1PT.sh:45 --train_buffer True (see 2B stage 1)
            lr=8e-4,                           # 8B_1PT.sh:17 lr=8e-4
            lr_schedule="cosine_with_min_lr",  # not passed: argument.py:53
            min_lr_ratio=0.1,                  # 8B_1PT.sh:59
            warmup_steps=1000,                 # 8B_1PT.sh:58
            warmup_ratio=0.0,                  # not passed: argument.py:55
            num_steps=200_000,                 # 8B_1PT.sh:46
            seq_len=16384,                     # 8B_1PT.sh:62 --max_seq_length 16384
            rows=5 * PAPER_DEVICES,            # 8B_1PT.sh:20-21 batch_size=64, grad_accum_steps=5
            min_pixels=65536,                  # 8B_1PT.sh:51
            max_pixels=4194304,                # 8B_1PT.sh:50
            weight_decay=0.01,                 # 8B_1PT.sh:57
        ),
        "stage2": dict(
            _SHARED,
            trainable="all",                   # no --train_buffer (argument.py:26 False)
            lr=5e-5,                           # 8B_2MTsi.sh:18 lr=5e-5
            lr_schedule="cosine_with_min_lr",  # 8B_2MTsi.sh:59
            min_lr_ratio=0.2,                  # 8B_2MTsi.sh:60
            warmup_steps=200,                  # 8B_2MTsi.sh:58
            warmup_ratio=0.0,                  # not passed: argument.py:55
            num_steps=50_000,                  # 8B_2MTsi.sh:46
            seq_len=18432,                     # 8B_2MTsi.sh:63 --max_seq_length 18432
            rows=2 * PAPER_DEVICES,            # 8B_2MTsi.sh:21-22 batch_size=64, grad_accum_steps=2
            min_pixels=65536,                  # 8B_2MTsi.sh:51
            max_pixels=16777216,               # 8B_2MTsi.sh:50
            weight_decay=0.01,                 # 8B_2MTsi.sh:57
        ),
        "stage3": dict(
            _SHARED,
            trainable="all",                   # no --train_buffer (argument.py:26 False)
            lr=6e-5,                           # 8B_3SFTsi.sh:18 lr=6e-5
            lr_schedule="cosine",              # 8B_3SFTsi.sh:58: decays to 0
            # 8B_3SFTsi.sh:60 passes 0.1, but argument.py:70-73 turns it into min_lr only for
            # cosine_with_min_lr; "cosine" ignores it here as there.
            min_lr_ratio=0.1,
            warmup_steps=200,                  # 8B_3SFTsi.sh:59
            warmup_ratio=0.0,                  # not passed: argument.py:55
            num_steps=4_500,                   # 8B_3SFTsi.sh:46
            seq_len=18432,                     # 8B_3SFTsi.sh:63 --max_seq_length 18432
            rows=1 * PAPER_DEVICES,            # 8B_3SFTsi.sh:20-21 batch_size=64, grad_accum_steps=1
            min_pixels=65536,                  # 8B_3SFTsi.sh:51
            max_pixels=16777216,               # 8B_3SFTsi.sh:50
            weight_decay=0.01,                 # 8B_3SFTsi.sh:57
        ),
    },
}

# The NEO paper's training recipe where it differs from the scripts; the rest (steps, batch,
# context, pixel budgets, min_lr_ratio, AdamW) the paper does not state apart from them.
NEO_PAPER = {
    "stage1": dict(trainable="stage1",   # the paper's stage-1 set: patch embedder, pre-Buffer, post-LLM H/W QK
                   warmup_steps=0, warmup_ratio=0.01, grad_clip=1.0),
    "stage2": dict(warmup_steps=0, warmup_ratio=0.01, grad_clip=1.0),
    "stage3": dict(lr=5e-5, warmup_steps=0, warmup_ratio=0.01, grad_clip=1.0),
}

# NEO-ov (no release scripts): the NEO-ov paper's peak LRs (2e-4 / 5e-5 / 5e-5), warm-up ratio
# 0.01, grad clip 1.0, AdamW 0.9 / 0.95 / 1e-8, weight decay 0.01, 256^2 .. 4096^2 pixels in
# mid-training and SFT. Kept from the NEO recipe (the NEO-ov paper states no other value):
# the stage-1 pixel budget (65,536 .. 4,194,304), cosine to min_lr_ratio 0.1 with transformers'
# schedule, the paper's stage-1 trainable set, the training code's rope_theta_vision (1000,
# argument.py:17). No source, to set per run: num_steps, rows.
# Sequence lengths: 16K / 16K -> 36K (OV_CONTEXT_SCHEDULE) / 36K.
_OV_COMMON = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01, grad_clip=1.0,
                  rope_theta_vision=1000.0,
                  lr_schedule="cosine_with_min_lr", min_lr_ratio=0.1, warmup_steps=0,
                  warmup_ratio=0.01, num_steps=100_000, rows=128, rows_per_device=1,
                  devices=128, min_pixels=65536, seq_len_schedule=())
# NEO-ov mid-training "progressively extends the context length from 16K to 36K tokens"
# (NEO-ov paper): the paper gives no boundaries. 16K for the first 40% of the steps (image
# data, where most samples fit 16K), 24K to 70%, then 36K (stage 3's length, so SFT starts
# at the length mid-training ended with). Starts below 1 are fractions of num_steps
# (neo_jax/core/context_schedule.py).
OV_CONTEXT_SCHEDULE = ((0, 16384), (0.4, 24576), (0.7, 36864))
NEO_OV_PAPER = {
    "stage1": dict(_OV_COMMON, trainable="stage1", lr=2e-4, seq_len=16384, max_pixels=4194304),
    "stage2": dict(_OV_COMMON, trainable="all", lr=5e-5, seq_len=36864, max_pixels=16777216,
                   seq_len_schedule=OV_CONTEXT_SCHEDULE),
    "stage3": dict(_OV_COMMON, trainable="all", lr=5e-5, seq_len=36864, max_pixels=16777216),
}

STAGES = ("stage1", "stage2", "stage3")
FIELDS = ("trainable", "lr", "lr_schedule", "min_lr_ratio", "warmup_steps", "warmup_ratio",
          "num_steps", "seq_len", "rows", "rows_per_device", "devices", "min_pixels",
          "max_pixels", "weight_decay", "b1", "b2", "eps", "grad_clip", "rope_theta_vision",
          "seq_len_schedule")


def values(size: str, stage: str, which: str, *, ov: bool) -> dict:
  """The recipe values of one stage.

  Args:
    size: "2B" | "8B" (NEO; ignored for NEO-ov).
    stage: "stage1" | "stage2" | "stage3".
    which: "release" (the scripts) | "paper".
    ov: NEO-ov (only "paper": the release ships no NEO-ov scripts).

  Returns:
    dict with every name of ``FIELDS``.

  Raises:
    ValueError: unknown stage or value set, or ``values=release`` for NEO-ov.
  """
  if stage not in STAGES:
    raise ValueError(f"Unknown stage {stage!r}; choose one of {list(STAGES)}.")
  if which not in ("release", "paper"):
    raise ValueError(f"values={which!r}: choose release (the authors' scripts) or paper.")
  if ov:
    if which != "paper":
      raise ValueError("values=release: the release ships no NEO-ov training scripts; "
                       "the NEO-ov recipes have the paper's values only (values=paper).")
    out = dict(NEO_OV_PAPER[stage])
  else:
    out = dict(RELEASE[size][stage])
    if which == "paper":
      out.update(NEO_PAPER[stage])
  missing = set(FIELDS) - set(out)
  assert not missing, missing
  return out
