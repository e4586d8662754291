"""The NEO paper's Table 3 ablation of the native primitive, at a size a 2-core CPU trains.

    python -m neo_jax.train --config ablation:variant=H,seed=0 --workdir /tmp/abl/H_s0

One run = one variant (a letter of the paper's Table 3) and one seed; the whole
study (every variant x several seeds, early stopping, the table, the statistics and
the plot) is ``python bench/ablation.py``. Variants differ only in the two model
switches (``model.attention_mask``, ``model.rope_mode``) and ``model.rope_theta_hw``;
a seed fixes the initial parameters *and* the data order, so the variants of one
seed see the same batches in the same order (paired comparisons).

Data: the four position tasks of ``data/embedded_position.py`` (marks on grids of
1..6 cells a side in training; held out: grids with a side of 7 or 8 cells) and the
``digit`` task as the "learned at all" control: the control is half of the examples,
each position task an eighth (the control must be learned for a comparison to mean
anything; BUILD_NOTES.md §0e's probes). The evaluator
reports held-out exact-match accuracy and the held-out answer loss
(``eval.loss``) every ``eval_every`` steps; the study stops a run early on that loss.

Model: 1 pre-Buffer + 3 post-LLM layers of width 64 (4 query heads of 32, 2 KV
heads: head_dim 32 leaves the H and W branches 4 frequencies each), fp32; rows of
256 tokens, 8 rows a step (about 45 examples), no rematerialisation; AdamW, lr 1e-3
(3e-3 with the full vocabulary), cosine over ``steps``.
Text is the real Qwen3 tokenizer's, and the embedding / LM head hold a compact
vocabulary: a row for each token id the study's records use (``study_vocabulary``,
``model.vocab_ids``; 70 rows). Over all 151,936 rows the head was three
quarters of a step's FLOPs (BUILD_NOTES §0e); ``compact_vocab=0`` restores it.

Arguments (``ablation:variant=A,seed=1,steps=200``): ``variant``
(A B D G H I), ``seed``, ``steps`` (the most a run may take, default 800),
``eval_every``, ``eval_limit`` (held-out examples per task), ``compact_vocab`` (1 / 0).
"""

import functools

import ml_collections

from neo_jax.configs import demo
from neo_jax.data import embedded
from neo_jax.data import tokenizer as tokenizer_lib
from neo_jax.data import vocabulary

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

POSITION_TASKS = embedded.POSITION_TASKS
CONTROL_TASK = "digit"
# The control is half of the examples, the position tasks share the other half.
ABLATION_WEIGHTS = {CONTROL_TASK: float(len(POSITION_TASKS)), **{t: 1.0 for t in POSITION_TASKS}}


@functools.lru_cache(maxsize=None)
def study_vocabulary(tokenizer: str = "embedded", cache_dir: str | None = None) -> tuple[int, ...]:
  """Sorted token ids of every record (train and held-out) of the study's tasks, with
  the special ids (``vocabulary.record_token_ids``): the ``model.vocab_ids`` of the
  study. Builds the tasks' records on first use (``embedded.load_records``).

  Args:
    tokenizer: ``data.tokenizer``; cache_dir: the embedded tasks' cache (default
      ``embedded.default_cache_dir()``).
  """
  records = [r for task in ABLATION_WEIGHTS for split in embedded.SPLITS
             for r in embedded.load_records(task, split, cache_dir)]
  return vocabulary.record_token_ids(records, tokenizer_lib.get_tokenizer(tokenizer))


def get_config(arg=None):
  """The study's model and data with the variant's switches (module docstring).

  Raises:
    ValueError: an unknown variant letter or argument.
  """
  from neo_jax.configs import common  # pylint: disable=g-import-not-at-top
  a = common.parse_arg(arg, variant="H", seed=0, steps=800, eval_every=80, eval_limit=40,
                       compact_vocab=1)
  if a.variant not in VARIANTS:
    raise ValueError(f"Unknown variant {a.variant!r}; Table 3 letters: {sorted(VARIANTS)}.")
  c = demo.get_config(f"steps={a.steps},eval_every={a.eval_every},seq_len=256,batch_size=8")
  m = c.model
  m.hidden_size = 64
  m.intermediate_size = 192
  m.num_prebuffer_layers = 1
  m.num_llm_layers = 3
  m.num_heads = 4
  m.num_kv_heads = 2
  m.head_dim = 32
  m.vision_hidden = 64
  m.max_supervised_tokens = 24
  m.remat_policy = "none"    # a 4-layer model of width 64: memory is no concern
  if a.compact_vocab:
    m.vocab_ids = study_vocabulary(c.data.tokenizer)
    m.vocab_size = len(m.vocab_ids)
  v = VARIANTS[a.variant]
  m.attention_mask = v["attention_mask"]
  m.rope_mode = v["rope_mode"]
  m.rope_theta_hw = v["rope_theta_hw"]
  # Only the study's tasks: the evaluator scores every embedded source in the config.
  for name in list(c.data.sources):
    if name not in ABLATION_WEIGHTS:
      del c.data.sources[name]
  for task, weight in ABLATION_WEIGHTS.items():
    c.data.sources[task] = ml_collections.ConfigDict({
        "kind": "embedded", "task": task, "weight": weight, "path": "", "data_root": "",
        "options": ml_collections.ConfigDict(embedded.TASK_OPTIONS[task])})
  c.train.seed = a.seed
  # BUILD_NOTES.md §0e's probes. Full vocabulary (H, seed 0, 300 steps): held-out digit
  # 0.70 and loss 0.51 with lr 3e-3 against 0.42 and 0.65 with 1e-2. Compact vocabulary
  # (A, seed 0, 400 steps): held-out loss 0.53 with 1e-3, 0.69 with 3e-3 (stuck near
  # 0.65 from step 80 to 280), 0.64 with 1e-2; the full vocabulary's first steps (loss
  # 11.9, large gradients) fill Adam's second moments and so shrink its early updates.
  c.train.lr = 1e-3 if a.compact_vocab else 3e-3
  c.train.warmup_steps = 20
  c.eval.limit_per_task = a.eval_limit
  c.eval.max_new_tokens = 6
  c.eval.loss = True
  # A checkpoint at every evaluation: a stopped study resumes at most one interval back.
  c.checkpoint.every_steps = a.eval_every
  c.checkpoint.keep = 1
  c.tensorboard = False
  return c
