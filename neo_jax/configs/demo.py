"""Demo: a small NEO on the embedded real-image data, sized for a 2-core CPU.

    python -m neo_jax.train --config demo --workdir /tmp/neo_demo

Arguments (``demo:steps=500,eval_every=100``): ``steps``,
``eval_every``, ``data`` ("pipeline" or "random").
"""

from neo_jax.configs import common
from neo_jax.core import tokens


DEMO_WEIGHTS = {"digit": 5.0, "text": 1.0, "aspect": 1.0, "spatial": 1.0, "multi_image": 1.0,
                "video": 1.0}


def get_config(arg=None):
  a = common.parse_arg(arg, steps=500, eval_every=100, data="pipeline", seq_len=512, batch_size=8)
  c = common.base_config("tiny")
  m = c.model
  m.vocab_size = tokens.QWEN3_VOCAB_SIZE  # the real Qwen3 + NEO tokenizer
  m.img_context_token_id = tokens.IMG_CONTEXT_TOKEN_ID
  m.img_start_token_id = tokens.IMG_START_TOKEN_ID
  m.img_end_token_id = tokens.IMG_END_TOKEN_ID
  m.hidden_size = 128
  m.intermediate_size = 384
  m.num_llm_layers = 3
  m.num_prebuffer_layers = 1
  m.num_heads = 4
  m.num_kv_heads = 2
  m.head_dim = 32
  m.vision_hidden = 64
  m.dtype = "float32"
  m.loss_vocab_chunk = 16384
  m.max_supervised_tokens = 48
  m.tie_word_embeddings = True
  c.seq_len = a.seq_len
  c.batch_size = a.batch_size
  if a.data == "pipeline":
    c.data = common.embedded_data_config()
    # Every input kind stays in the mixture; the digit task (the accuracy
    # target) gets half of the samples.
    for task, weight in DEMO_WEIGHTS.items():
      c.data.sources[task].weight = weight
  c.train.num_steps = a.steps
  c.train.lr = 2e-3
  c.train.warmup_steps = 30
  c.train.weight_decay = 0.0
  c.checkpoint.every_steps = 100
  c.log_every = 10
  c.eval_every = a.eval_every
  c.eval.limit_per_task = 0  # the whole held-out split (360 digit drawings)
  return c


def sweep():
  """The demo sweep: learning rate x pre-Buffer depth (big_vision style)."""
  return [{"config.train.lr": lr, "config.model.num_prebuffer_layers": depth}
          for lr in (1e-3, 2e-3, 4e-3) for depth in (0, 1, 2)]
