"""The released-size recipes against the authors' training scripts, value by value.

Each row: (config field, the script's value, release file, line, text on that line). The
default test reads every field from the built config and compares it with the value
written here; with ``NEO_RELEASE_DIR`` set (``testlib/release_trainkit.py``) a second test
opens each cited release line and requires its text there, and requires a script that
takes a default (``argument.py``) not to pass that option.
"""

import json

import pytest

from neo_jax.configs import neo_2b, neo_9b, neo_ov_2b, neo_ov_9b
from testlib import release_trainkit

ARG = "neo/train/argument.py"
# Defaults the scripts do not pass (argument.py; rows shared by every stage).
ADAMW = [("train.b1", 0.9, ARG, 50, "adam_beta1: float = field(default=0.9)"),
         ("train.b2", 0.95, ARG, 51, "adam_beta2: float = field(default=0.95)"),
         ("train.eps", 1e-8, ARG, 52, "adam_epsilon: float = field(default=1e-8)"),
         # used from scratch at neo/model/build.py:40
         ("model.rope_theta_vision", 1000.0, ARG, 17,
          "rope_theta_vision: float = field(default=1000.0)")]
DEFAULT_SCHEDULE = ("train.lr_schedule", "cosine_with_min_lr", ARG, 53,
                    'lr_scheduler_type: str = field(default="cosine_with_min_lr")')
NO_WARMUP_RATIO = ("train.warmup_ratio", 0.0, ARG, 55, "warmup_ratio: float = field(default=0.0)")
NO_WARMUP_STEPS = ("train.warmup_steps", 0, ARG, 56, "warmup_steps: int = field(default=0)")
NO_BUFFER = ("train.trainable", "all", ARG, 26, "train_buffer: bool = field(default=False)")

SCRIPTS = {
    (neo_2b, "stage1"): ("scripts/2B_1PT.sh", [
        ("train.trainable", "release_stage1", None, 48, "--train_buffer True"),
        ("train.lr", 8e-4, None, 22, "lr=8e-4"),
        DEFAULT_SCHEDULE,
        ("train.min_lr_ratio", 0.1, None, 62, "--min_lr_ratio 0.1"),
        ("train.warmup_steps", 1000, None, 61, "--warmup_steps 1000"),
        NO_WARMUP_RATIO,
        ("train.num_steps", 200_000, None, 49, "--max_steps 200000"),
        ("seq_len", 16384, None, 65, "--max_seq_length 16384"),
        ("train.grad_accum_steps", 5, None, 25, "grad_accum_steps=5"),
        ("batch_size", 5 * 128, None, 25, "grad_accum_steps=5"),   # x 16 nodes x 8 GPUs
        ("data.options.min_pixels", 65536, None, 54, "--min_pixels 65536"),
        ("data.options.max_pixels", 4194304, None, 53, "--max_pixels 4194304"),
        ("train.weight_decay", 0.01, None, 60, "--weight_decay 0.01"),
    ] + ADAMW),
    (neo_2b, "stage2"): ("scripts/2B_2MTsi.sh", [
        NO_BUFFER,
        ("train.lr", 5e-5, None, 18, "lr=5e-5"),
        DEFAULT_SCHEDULE,
        ("train.min_lr_ratio", 0.2, None, 58, "--min_lr_ratio 0.2"),
        NO_WARMUP_STEPS,
        ("train.warmup_ratio", 0.03, None, 57, "--warmup_ratio 0.03"),
        ("train.num_steps", 50_000, None, 45, "--max_steps 50000"),
        ("seq_len", 32768, None, 61, "--max_seq_length 32768"),
        ("train.grad_accum_steps", 2, None, 22, "grad_accum_steps=2"),
        ("batch_size", 2 * 128, None, 22, "grad_accum_steps=2"),
        ("data.options.min_pixels", 65536, None, 50, "--min_pixels 65536"),
        ("data.options.max_pixels", 16777216, None, 49, "--max_pixels 16777216"),
        ("train.weight_decay", 0.01, None, 56, "--weight_decay 0.01"),
    ] + ADAMW),
    (neo_2b, "stage3"): ("scripts/2B_3SFTsi.sh", [
        NO_BUFFER,
        ("train.lr", 6e-5, None, 18, "lr=6e-5"),
        DEFAULT_SCHEDULE,
        ("train.min_lr_ratio", 0.1, None, 59, "--min_lr_ratio 0.1"),
        NO_WARMUP_STEPS,
        ("train.warmup_ratio", 0.03, None, 58, "--warmup_ratio 0.03"),
        ("train.num_steps", 4_500, None, 46, "--max_steps 4500"),
        ("seq_len", 34816, None, 62, "--max_seq_length 34816"),
        ("train.grad_accum_steps", 1, None, 22, "grad_accum_steps=1"),
        ("batch_size", 128, None, 22, "grad_accum_steps=1"),
        ("data.options.min_pixels", 65536, None, 51, "--min_pixels 65536"),
        ("data.options.max_pixels", 16777216, None, 50, "--max_pixels 16777216"),
        ("train.weight_decay", 0.01, None, 57, "--weight_decay 0.01"),
    ] + ADAMW),
    (neo_9b, "stage1"): ("scripts/8B_1PT.sh", [
        ("train.trainable", "release_stage1", None, 45, "--train_buffer True"),
        ("train.lr", 8e-4, None, 17, "lr=8e-4"),
        DEFAULT_SCHEDULE,
        ("train.min_lr_ratio", 0.1, None, 59, "--min_lr_ratio 0.1"),
        ("train.warmup_steps", 1000, None, 58, "--warmup_steps 1000"),
        NO_WARMUP_RATIO,
        ("train.num_steps", 200_000, None, 46, "--max_steps 200000"),
        ("seq_len", 16384, None, 62, "--max_seq_length 16384"),
        ("train.grad_accum_steps", 5, None, 21, "grad_accum_steps=5"),
        ("batch_size", 5 * 128, None, 21, "grad_accum_steps=5"),
        ("data.options.min_pixels", 65536, None, 51, "--min_pixels 65536"),
        ("data.options.max_pixels", 4194304, None, 50, "--max_pixels 4194304"),
        ("train.weight_decay", 0.01, None, 57, "--weight_decay 0.01"),
    ] + ADAMW),
    (neo_9b, "stage2"): ("scripts/8B_2MTsi.sh", [
        NO_BUFFER,
        ("train.lr", 5e-5, None, 18, "lr=5e-5"),
        ("train.lr_schedule", "cosine_with_min_lr", None, 59, '--lr_scheduler_type "cosine_with_min_lr"'),
        ("train.min_lr_ratio", 0.2, None, 60, "--min_lr_ratio 0.2"),
        ("train.warmup_steps", 200, None, 58, "--warmup_steps 200"),
        NO_WARMUP_RATIO,
        ("train.num_steps", 50_000, None, 46, "--max_steps 50000"),
        ("seq_len", 18432, None, 63, "--max_seq_length 18432"),
        ("train.grad_accum_steps", 2, None, 22, "grad_accum_steps=2"),
        ("batch_size", 2 * 128, None, 22, "grad_accum_steps=2"),
        ("data.options.min_pixels", 65536, None, 51, "--min_pixels 65536"),
        ("data.options.max_pixels", 16777216, None, 50, "--max_pixels 16777216"),
        ("train.weight_decay", 0.01, None, 57, "--weight_decay 0.01"),
    ] + ADAMW),
    (neo_9b, "stage3"): ("scripts/8B_3SFTsi.sh", [
        NO_BUFFER,
        ("train.lr", 6e-5, None, 18, "lr=6e-5"),
        ("train.lr_schedule", "cosine", None, 58, '--lr_scheduler_type "cosine"'),
        ("train.min_lr_ratio", 0.1, None, 60, "--min_lr_ratio 0.1"),  # ignored by "cosine"
        ("train.warmup_steps", 200, None, 59, "--warmup_steps 200"),
        NO_WARMUP_RATIO,
        ("train.num_steps", 4_500, None, 46, "--max_steps 4500"),
        ("seq_len", 18432, None, 63, "--max_seq_length 18432"),
        ("train.grad_accum_steps", 1, None, 21, "grad_accum_steps=1"),
        ("batch_size", 128, None, 21, "grad_accum_steps=1"),
        ("data.options.min_pixels", 65536, None, 51, "--min_pixels 65536"),
        ("data.options.max_pixels", 16777216, None, 50, "--max_pixels 16777216"),
        ("train.weight_decay", 0.01, None, 57, "--weight_decay 0.01"),
    ] + ADAMW),
}
# Every script passes --max_grad_norm 1, but its DeepSpeed config has no "gradient_clipping"
# key, which neither transformers nor accelerate adds: DeepSpeed's default 0.0 (off) ran.
GRAD_CLIP_RAN = 0.0
# The NEO paper's values where they differ from the scripts (the rest stays the script's).
PAPER = {"stage1": {"train.trainable": "stage1", "train.warmup_steps": 0,
                    "train.warmup_ratio": 0.01, "train.grad_clip": 1.0},
         "stage2": {"train.warmup_steps": 0, "train.warmup_ratio": 0.01, "train.grad_clip": 1.0},
         "stage3": {"train.lr": 5e-5, "train.warmup_steps": 0, "train.warmup_ratio": 0.01,
                    "train.grad_clip": 1.0}}
CASES = list(SCRIPTS)
IDS = [f"{m.__name__.split('.')[-1]}:{s}" for m, s in CASES]


def get(c, path):
  for k in path.split("."):
    c = c[k]
  return c


def _equal(got, want):
  return got == pytest.approx(want, rel=1e-12) if isinstance(want, float) else got == want


@pytest.mark.parametrize("module,stage", CASES, ids=IDS)
def test_recipe_equals_the_release_script(module, stage):
  c = module.get_config(stage)
  rows = SCRIPTS[(module, stage)][1] + [("train.grad_clip", GRAD_CLIP_RAN, None, 0, "")]
  bad = [(f, get(c, f), v) for f, v, *_ in rows if not _equal(get(c, f), v)]
  assert not bad, bad


@pytest.mark.parametrize("module,stage", CASES, ids=IDS)
def test_values_paper_takes_the_paper_where_it_differs(module, stage):
  c = module.get_config(f"{stage},values=paper")
  want = {f: v for f, v, *_ in SCRIPTS[(module, stage)][1]}
  want["train.grad_clip"] = GRAD_CLIP_RAN
  want.update(PAPER[stage])
  bad = [(f, get(c, f), v) for f, v in want.items() if not _equal(get(c, f), v)]
  assert not bad, bad


def test_rows_set_the_accumulation_for_the_devices():
  # 640 rows (2B_1PT.sh:25 grad_accum_steps=5 on 128 GPUs) on 64 data-parallel devices.
  c = neo_2b.get_config("stage1,devices=64")
  assert (c.batch_size, c.train.grad_accum_steps) == (640, 10)
  c = neo_9b.get_config("stage2,devices=256")
  assert (c.batch_size, c.train.grad_accum_steps) == (256, 1)
  c = neo_2b.get_config("stage3,batch_size=512,devices=128")
  assert (c.batch_size, c.train.grad_accum_steps) == (512, 4)
  with pytest.raises(ValueError, match="devices=256"):
    neo_2b.get_config("stage1,devices=256")   # 640 rows are not a multiple of 256


def test_neo_ov_keeps_the_paper_values_and_has_no_release_set():
  for module in (neo_ov_2b, neo_ov_9b):
    got = [(c.train.lr, c.train.warmup_ratio, c.train.warmup_steps, c.train.grad_clip,
            c.train.trainable, c.train.lr_schedule, c.train.min_lr_ratio)
           for c in (module.get_config(f"stage{s}") for s in (1, 2, 3))]
    assert got == [(2e-4, 0.01, 0, 1.0, "stage1", "cosine_with_min_lr", 0.1),
                   (5e-5, 0.01, 0, 1.0, "all", "cosine_with_min_lr", 0.1),
                   (5e-5, 0.01, 0, 1.0, "all", "cosine_with_min_lr", 0.1)]
    assert module.get_config("stage2,values=paper").train.lr == 5e-5
    with pytest.raises(ValueError, match="no NEO-ov training scripts"):
      module.get_config("stage2,values=release")


@pytest.mark.skipif(release_trainkit.trainkit_dir() is None,
                    reason="set NEO_RELEASE_DIR to the extracted release")
@pytest.mark.parametrize("module,stage", CASES, ids=IDS)
def test_cited_release_lines_hold_the_values(module, stage):
  root = release_trainkit.trainkit_dir()
  script, rows = SCRIPTS[(module, stage)]
  text = (root / script).read_text()
  for field, _, path, number, want in rows:
    line = release_trainkit.line(root / (path or script), number)
    assert want in line, (field, path or script, number, line)
    if path == ARG:  # a default: the script must not pass the option
      option = "--" + want.split(":")[0]
      assert option not in text, (script, option)
  # --max_grad_norm 1 is passed, and the script's DeepSpeed json has no gradient_clipping.
  assert "--max_grad_norm 1" in text
  ds = text.split("deepspeed=./scripts/")[1].split()[0]
  assert "gradient_clipping" not in json.loads((root / "scripts" / ds).read_text())
