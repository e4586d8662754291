"""The NEO paper's Table 3 ablation of the native primitive, at demo scale.

    python -m neo_jax.train --config ablation:variant=H,seed=0 --workdir /tmp/abl/H_0

One run = one variant (a letter of the paper's Table 3) and one seed; the whole
study (every variant x several seeds, the table and the plot) is
``python bench/ablation.py``. Variants differ only in the two model switches
(``model.attention_mask``, ``model.rope_mode``) and ``model.rope_theta_hw``; a
seed fixes the initial parameters *and* the data order, so runs of one seed see
the same batches in the same order.

Arguments (``ablation:variant=A,seed=1,steps=320``): ``variant``
(A B D G H I), ``seed``, ``steps``, ``eval_every``, ``eval_limit`` (held-out
examples per task).
"""

from neo_jax.configs import demo

# Table 3 of "From Pixels to Words - Towards Native Vision-Language Primitives at
# Scale": letter -> (attention mask, RoPE design, rope_theta_hw, paper's 10-benchmark mean).
VARIANTS = {
    "A": dict(attention_mask="causal", rope_mode="1d", rope_theta_hw=10_000.0, paper=39.1),
    "B": dict(attention_mask="mixed", rope_mode="1d", rope_theta_hw=10_000.0, paper=39.8),
    "D": dict(attention_mask="mixed", rope_mode="mrope", rope_theta_hw=10_000.0, paper=41.7),
    "G": dict(attention_mask="causal", rope_mode="native", rope_theta_hw=10_000.0, paper=40.3),
    "H": dict(attention_mask="mixed", rope_mode="native", rope_theta_hw=10_000.0, paper=44.0),
    "I": dict(attention_mask="mixed", rope_mode="native", rope_theta_hw=1_000_000.0, paper=42.0),
}

# The position-sensitive tasks carry most of the mixture; the others stay in it so
# every input kind (text, one image, several images, video) is still trained.
ABLATION_WEIGHTS = {"spatial": 3.0, "aspect": 2.0, "multi_image": 3.0, "digit": 1.0,
                    "video": 1.0, "text": 0.5}


def get_config(arg=None):
  """The demo model and data with the variant's switches (see the module docstring).

  Raises:
    ValueError: an unknown variant letter or argument.
  """
  from neo_jax.configs import common  # pylint: disable=g-import-not-at-top
  a = common.parse_arg(arg, variant="H", seed=0, steps=320, eval_every=80, eval_limit=100)
  if a.variant not in VARIANTS:
    raise ValueError(f"Unknown variant {a.variant!r}; Table 3 letters: {sorted(VARIANTS)}.")
  c = demo.get_config(f"steps={a.steps},eval_every={a.eval_every},seq_len=384")
  v = VARIANTS[a.variant]
  c.model.attention_mask = v["attention_mask"]
  c.model.rope_mode = v["rope_mode"]
  c.model.rope_theta_hw = v["rope_theta_hw"]
  for task, weight in ABLATION_WEIGHTS.items():
    c.data.sources[task].weight = weight
  c.train.seed = a.seed
  c.train.warmup_steps = 20
  c.eval.limit_per_task = a.eval_limit
  c.checkpoint.every_steps = a.steps  # one checkpoint at the end: the study needs no resume
  c.tensorboard = False
  return c
