"""The learning-rate schedules (``optimizer.learning_rate_schedule``) value by value.

``cosine_with_min_lr`` / ``cosine`` against a NumPy float64 statement of transformers
4.57.1's lambda (``optimization.py:324-332``), with ``min_lr = lr * min_lr_ratio`` as the
release's ``argument.py:70-73`` sets it and the warm-up of ``get_warmup_steps``
(``training_args.py:2551-2558``), for every released recipe stage; and against
transformers' own ``get_scheduler`` where transformers is installed.
"""

import math
import types

import ml_collections
import numpy as np
import pytest

from neo_jax.configs import neo_2b, neo_9b, neo_ov_2b
from neo_jax.train import optimizer

RECIPES = [(m, f"stage{s}{v}") for m in (neo_2b, neo_9b) for s in (1, 2, 3)
           for v in ("", ",values=paper")] + [(neo_ov_2b, f"stage{s}") for s in (1, 2, 3)]


def hf_lr(step: int, *, lr: float, kind: str, min_lr_ratio: float, warmup_steps: int,
          warmup_ratio: float, total: int) -> float:
  """transformers 4.57.1 as the release's Trainer runs it, in float64."""
  warm = warmup_steps if warmup_steps > 0 else math.ceil(total * warmup_ratio)
  rate = (lr * min_lr_ratio) / lr if kind == "cosine_with_min_lr" else 0.0
  if step < warm:
    return lr * step / max(1, warm)
  progress = (step - warm) / max(1, total - warm)
  factor = 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress))
  return lr * max(0.0, factor * (1 - rate) + rate)


def _probe_steps(total: int, warm: int) -> np.ndarray:
  """Every step of the warm-up's ends and the decay's ends, and 400 spread over the run."""
  edges = [0, 1, 2, warm - 1, warm, warm + 1, total // 2, total - 2, total - 1, total]
  return np.unique(np.clip(np.r_[edges, np.linspace(0, total, 400).astype(int)], 0, total))


def _check(train_cfg, steps):
  sched = optimizer.learning_rate_schedule(train_cfg)
  got = np.asarray(sched(np.asarray(steps, np.int32)), np.float64)
  want = np.asarray([hf_lr(int(s), lr=train_cfg.lr, kind=train_cfg.lr_schedule,
                           min_lr_ratio=train_cfg.min_lr_ratio,
                           warmup_steps=train_cfg.warmup_steps,
                           warmup_ratio=train_cfg.warmup_ratio, total=train_cfg.num_steps)
                     for s in steps])
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=train_cfg.lr * 2e-7)
  return got, want


@pytest.mark.parametrize("module,arg", RECIPES, ids=lambda x: getattr(x, "__name__", x))
def test_recipe_schedules_equal_transformers_formula(module, arg):
  tc = module.get_config(arg).train
  warm = optimizer.warmup_steps(tc)
  got, want = _check(tc, _probe_steps(tc.num_steps, warm))
  assert got[0] == 0.0  # transformers' warm-up starts at 0: the first update has lr 0


def test_warmup_lengths_are_transformers_ceil():
  # 2B_2MTsi.sh:57 / 2B_3SFTsi.sh:58 warmup_ratio 0.03: ceil(0.03 * 50000), ceil(0.03 * 4500).
  assert optimizer.warmup_steps(neo_2b.get_config("stage2").train) == 1500
  assert optimizer.warmup_steps(neo_2b.get_config("stage3").train) == 135
  # values=paper: ratio 0.01 -> ceil(0.01 * 200000) = 2000.
  assert optimizer.warmup_steps(neo_9b.get_config("stage1,values=paper").train) == 2000


def test_ends_of_the_decays():
  # 8B stage 3 (8B_3SFTsi.sh:58 "cosine"): 6e-5 at the end of the 200-step warm-up, 0 at 4500.
  tc = neo_9b.get_config("stage3").train
  sched = optimizer.learning_rate_schedule(tc)
  assert float(sched(200)) == pytest.approx(6e-5, rel=1e-6)
  assert abs(float(sched(4500))) < 1e-12
  # 8B stage 2: cosine_with_min_lr to 0.2 x 5e-5 (8B_2MTsi.sh:59-60).
  sched = optimizer.learning_rate_schedule(neo_9b.get_config("stage2").train)
  assert float(sched(50_000)) == pytest.approx(1e-5, rel=1e-6)


def test_cosine_ignores_min_lr_ratio_and_unknown_kind_raises():
  base = dict(lr=1e-3, warmup_steps=10, warmup_ratio=0.0, num_steps=100, min_lr_ratio=0.5)
  cos = optimizer.learning_rate_schedule(ml_collections.ConfigDict(dict(base, lr_schedule="cosine")))
  cos0 = optimizer.learning_rate_schedule(
      ml_collections.ConfigDict(dict(base, lr_schedule="cosine", min_lr_ratio=0.0)))
  assert [float(cos(s)) for s in range(0, 101, 7)] == [float(cos0(s)) for s in range(0, 101, 7)]
  with pytest.raises(ValueError, match="lr_schedule"):
    optimizer.learning_rate_schedule(ml_collections.ConfigDict(dict(base, lr_schedule="linear")))


def test_warmup_cosine_keeps_the_project_schedule():
  """The default of ``base_config`` (smoke / demo / ablation): warm-up from lr / warmup."""
  tc = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=4, warmup_ratio=0.0, num_steps=20,
                                      min_lr_ratio=0.1, lr_schedule="warmup_cosine"))
  sched = optimizer.learning_rate_schedule(tc)
  want = [1e-3 / 4 + (1e-3 - 1e-3 / 4) * s / 4 for s in range(4)]
  want += [1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * (s - 4) / 16)) for s in range(4, 21)]
  np.testing.assert_allclose([float(sched(s)) for s in range(21)], want, rtol=2e-6)


@pytest.mark.torch
@pytest.mark.parametrize("module,arg", RECIPES[:12], ids=lambda x: getattr(x, "__name__", x))
def test_recipe_schedules_equal_transformers_itself(module, arg):
  """transformers' own scheduler, built as ``Trainer.create_scheduler`` does
  (trainer.py:1851-1858) with the release's ``lr_scheduler_kwargs`` rule."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from transformers.optimization import get_scheduler  # pylint: disable=import-outside-toplevel
  tc = module.get_config(arg).train
  args = types.SimpleNamespace(warmup_steps=tc.warmup_steps, warmup_ratio=tc.warmup_ratio)
  warm = transformers.TrainingArguments.get_warmup_steps(args, tc.num_steps)
  kwargs = {"min_lr": tc.lr * tc.min_lr_ratio} if tc.lr_schedule == "cosine_with_min_lr" else {}
  opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=tc.lr)
  sched = get_scheduler(tc.lr_schedule, optimizer=opt, num_warmup_steps=warm,
                        num_training_steps=tc.num_steps, scheduler_specific_kwargs=kwargs)
  steps = _probe_steps(tc.num_steps, warm)
  want = [tc.lr * sched.lr_lambdas[0](int(s)) for s in steps]
  ours = optimizer.learning_rate_schedule(tc)
  got = np.asarray(ours(np.asarray(steps, np.int32)), np.float64)
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=tc.lr * 2e-7)
