"""Smoke config: the tiny model on random packed batches (tests, CI, AOT checks).

    python -m neo_jax.train --config smoke:steps=20 --workdir /tmp/smoke
"""

from neo_jax.configs import common


def get_config(arg=None):
  a = common.parse_arg(arg, steps=20, seq_len=64, batch_size=8, accum=1)
  c = common.base_config("tiny")
  c.seq_len = a.seq_len
  c.batch_size = a.batch_size
  # The pipeline's schema, so a data mixture can be given on the command line
  # (--config.data.kind=pipeline --config.data.mixture=mix.yaml); random batches by default.
  c.data = common.embedded_data_config()
  c.data.kind = "random"
  c.train.num_steps = a.steps
  c.train.lr = 1e-3
  c.train.warmup_steps = 2
  c.train.grad_accum_steps = a.accum
  c.checkpoint.every_steps = 5
  c.checkpoint.async_save = True
  c.log_every = 1
  c.peak_flops_per_device = 1e11  # nominal: avoids a measurement in tests
  c.tensorboard = False
  return c
