"""Model FLOPs and MFU: the trainer's count equals one done by hand on a hand-built
batch, frozen matrices lose their weight gradient, peaks come from a chip table."""

from __future__ import annotations

import types

import numpy as np
import pytest

from neo_jax.configs import smoke
from neo_jax.core.batch import IGNORE_INDEX, assemble_batch
from neo_jax.train import flops, trainer
from neo_jax.train.throughput import Throughput

CTX, START, END = 500, 501, 502   # the tiny preset's image tokens


def _sample(ids, labels):
  ids = np.asarray(ids, np.int32)
  hw = np.zeros((len(ids), 2), np.int32)
  ctx = np.flatnonzero(ids == CTX)
  if len(ctx):
    hw[ctx] = np.asarray([(0, 0), (0, 1), (1, 0), (1, 1)])[:len(ctx)]
  return {"input_ids": ids, "labels": np.asarray(labels, np.int32), "token_hw": hw,
          "pixel_values": np.full((len(ctx), 4, 768), 7, np.uint8)}


def _hand_batch(rows: int, seq: int) -> dict:
  """Row 0: A = 5 text tokens, last two supervised; B = 2 text, <img>, 2x2 visual tokens,
  </img>, 3 text, last two supervised. Row 1: C = 3 text, last two supervised."""
  x = IGNORE_INDEX
  a = _sample([10, 11, 12, 13, 14], [x, x, x, 13, 14])
  b = _sample([20, 21, START, CTX, CTX, CTX, CTX, END, 30, 31, 32],
              [x, x, x, x, x, x, x, x, x, 31, 32])
  c = _sample([40, 41, 42], [x, 41, 42])
  return assemble_batch([[a, b], [c]] + [[]] * (rows - 2), seq, pad_id=0, img_context_id=CTX)


def _hand_count(decoder_trains: bool, head_trains: bool) -> float:
  """The tiny preset (D 64, I 128, 3 layers, 4 q / 2 kv heads of 16, V 32, vocab 512,
  tied) on the batch above, counted from the architecture."""
  d_model, inter, layers, hq, hkv, hd, vis, vocab = 64, 128, 3, 4, 2, 16, 32, 512
  per_layer = (d_model * hq * hd * 2        # q_proj, q_proj_hw
               + d_model * hkv * hd * 3     # k_proj, k_proj_hw, v_proj
               + hq * hd * d_model          # o_proj
               + 3 * d_model * inter)       # gate, up, down
  decoder = layers * per_layer              # weights a token meets
  vision = 4 * (3 * 16 * 16) * vis + 4 * vis * d_model   # 4 patches, then 4V -> D
  head = vocab * d_model
  tokens = 5 + 11 + 3
  visual = 4
  supervised = 2 + 2 + 2
  # Visible keys per query: A causal 1..5; B: text 1, 2, <img> 3, each visual token
  # sees up to the last one of its image (7), </img> 8, text 9, 10, 11; C 1..3.
  pairs = sum(range(1, 6)) + (1 + 2 + 3 + 4 * 7 + 8 + 9 + 10 + 11) + sum(range(1, 4))
  assert pairs == 93
  mult = lambda trains: 6 if trains else 4      # fwd 2 + act-grad 2 (+ weight-grad 2)
  attention = 3 * 2 * layers * hq * (2 * hd + hd)
  return (mult(decoder_trains) * decoder * tokens + 6 * vision * visual
          + mult(head_trains) * head * supervised + attention * pairs)


@pytest.mark.parametrize("trainable,decoder_trains", [("all", True), ("^vision_model/", False)])
def test_logged_model_flops_equal_a_hand_count(trainable, decoder_trains):
  c = smoke.get_config()
  c.train.trainable = trainable
  s = trainer.Setup(c)
  batch = _hand_batch(c.batch_size, c.seq_len)
  _, metrics = s.train_step(s.init_state(0), s.global_batch(batch))
  assert int(metrics["tokens"]) == 19 and int(metrics["visual_tokens"]) == 4
  assert int(metrics["supervised_tokens"]) == 6 and float(metrics["attention_pairs"]) == 93
  meter = Throughput(c, s.abstract_state.params, s.trainable)
  meter.step(metrics)
  logged = meter.measure()
  want = _hand_count(decoder_trains, head_trains=decoder_trains)
  assert logged["model_flops_per_step"] == pytest.approx(want, rel=1e-6)
  assert logged["mfu"] > 0


def test_peak_comes_from_the_chip_table_else_a_labelled_measurement():
  tpu = types.SimpleNamespace(device_kind="TPU v5p", platform="tpu")
  assert flops.peak_flops_per_device("bfloat16", tpu) == (459e12, "table:TPU v5p")
  h100 = types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3", platform="gpu")
  assert flops.peak_flops_per_device("float32", h100) == (494e12, "table:NVIDIA H100 80GB HBM3")
  v5e = types.SimpleNamespace(device_kind="TPU v5 lite", platform="tpu")
  assert flops.peak_flops_per_device("bfloat16", v5e)[0] == 197e12
  import jax  # pylint: disable=import-outside-toplevel
  peak, source = flops.peak_flops_per_device("float32", jax.local_devices()[0])
  assert source == "measured:cpu" and peak > 0
