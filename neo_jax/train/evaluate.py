"""Periodic held-out evaluation: greedy answers, exact-match accuracy per task.

Examples come from ``data.pipeline.make_eval_examples`` (the embedded data's
held-out split); the answer is generated greedily with the KV-cache decoder
(``infer/decode.py``, under the training mesh: the parameters stay sharded) until
``<|im_end|>`` and compared with the reference string by ``scoring.exact_match``
(after normalisation).

Every prompt gets the host-side checks a training batch gets (``health.check_prompts``)
when the evaluator is built: one longer than ``model.max_sample_tokens`` (the kernel's
schedule bound) or with more visual tokens than ``model.max_visual_tokens`` (the
held-out loss runs the model with that gather: NaN rows; the decoder sizes its own)
would give meaningless numbers, so it is a named error (``health.EvalPromptError``)
before the first step. ``run(..., stop=)`` asks ``stop()`` before every batch (the trainer passes
the preemption check, called in lockstep on every process) and returns None when told
to stop.

With ``eval.loss`` (default off) it also reports the held-out loss: the mean cross
entropy [nats per token] of each reference answer (its tokens and ``<|im_end|>``) under
teacher forcing, ``loss/<task>`` per task and ``loss`` = their unweighted mean over
tasks (what the Table 3 study stops early on, ``bench/ablation.py``). Every token is
weighted 1 (not the training loss's ``loss_weighting``), so the number is the same
whatever the packing.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from neo_jax.core import batch as batch_lib
from neo_jax.core import paths
from neo_jax.infer import decode, scoring
from neo_jax.model import loss as loss_lib
from neo_jax.model.neo import NEO, head_weights
from neo_jax.train import health

# Supervised predictions gathered per held-out row (an answer and <|im_end|>).
_LOSS_MAX_ANSWER_TOKENS = 16
_LOSS_BUCKET = 64


def teacher_forced(example: dict) -> dict:
  """A held-out example as a training sample: the prompt, then ``answer_ids`` (the answer
  and ``<|im_end|>``) supervised, for ``core.batch.assemble_batch``.

  Raises:
    ValueError: more answer tokens than the loss gathers (16).
  """
  ans = np.asarray(example["answer_ids"], np.int32)
  if len(ans) > _LOSS_MAX_ANSWER_TOKENS:
    raise ValueError(f"record {example.get('record_id')}: answer of {len(ans)} tokens; the "
                     f"held-out loss takes <= {_LOSS_MAX_ANSWER_TOKENS}.")
  n = len(example["input_ids"])
  return {"input_ids": np.concatenate([np.asarray(example["input_ids"], np.int32), ans]),
          "labels": np.concatenate([np.full(n, batch_lib.IGNORE_INDEX, np.int32), ans]),
          "token_hw": np.concatenate([np.asarray(example["token_hw"], np.int32),
                                      np.zeros((len(ans), 2), np.int32)]),
          "pixel_values": example["pixel_values"], "record_id": example.get("record_id")}


def answer_loss_sums(params: Any, batch: dict, *, model: NEO) -> tuple[jax.Array, jax.Array]:
  """``(sum of answer-token cross entropies [nats], number of answer tokens)`` of a
  teacher-forced batch (``teacher_forced`` rows), every token weighted 1."""
  cfg = model.config
  hidden = model.apply({"params": params}, batch["input_ids"], batch["segment_ids"],
                       batch["token_hw"], batch["pixel_values"], return_hidden=True)
  head, layout = head_weights(params, cfg)
  out = loss_lib.lm_loss(hidden, head, batch["labels"], batch["segment_ids"], mode="token",
                         chunk=cfg.loss_vocab_chunk, head_layout=layout,
                         max_supervised_tokens=_LOSS_MAX_ANSWER_TOKENS, vocab_ids=cfg.vocab_ids)
  return out.weighted_ce, out.tokens


class Evaluator:
  """Builds the eval set once; ``run(params) -> {"acc/<task>": float, ...}``."""

  def __init__(self, config: ml_collections.ConfigDict, setup: Any):
    from neo_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    self.config = config
    self.model = setup.model
    ec = config.eval
    self.examples = pipeline.make_eval_examples(config.data, split="heldout",
                                                limit=ec.limit_per_task or None)
    self.tokenizer = pipeline.get_tokenizer(config.data.tokenizer)
    health.check_prompts(self.examples, self.model.config)
    self.generator = decode.Generator(self.model.config, mesh=setup.mesh, rules=setup.rules)
    self.mesh, self.rules = setup.mesh, setup.rules
    self._loss_fn = None
    if ec.get("loss", False):
      for ex in self.examples:
        teacher_forced(ex)   # an over-long answer fails here, before the first step
      self._loss_fn = jax.jit(functools.partial(answer_loss_sums,
                                                model=NEO(self.generator.cfg)))

  def losses(self, params: Any, stop: Callable[[], bool] | None = None) -> dict | None:
    """``{"loss/<task>": mean answer-token cross entropy, "loss": mean over tasks}``
    (module docstring); None when ``stop()`` turned True before a batch."""
    bs = self.config.eval.batch_size
    by_task = collections.defaultdict(list)
    for ex in self.examples:
      by_task[ex["task"]].append(ex)
    ctx = contextlib.ExitStack()
    if self.mesh is not None:
      ctx.enter_context(nn.logical_axis_rules(self.rules or ()))
      ctx.enter_context(jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh))
    out = {}
    with ctx:
      for task in sorted(by_task):
        ce, count = 0.0, 0
        for i in range(0, len(by_task[task]), bs):
          if stop is not None and stop():
            return None
          rows = [[teacher_forced(ex)] for ex in by_task[task][i:i + bs]]
          rows += [[]] * (bs - len(rows))            # one batch shape per length bucket
          longest = max(len(r[0]["input_ids"]) for r in rows if r)
          batch = batch_lib.assemble_batch(
              rows, -(-longest // _LOSS_BUCKET) * _LOSS_BUCKET, pad_id=0,
              img_context_id=self.generator.cfg.img_context_token_id,
              patch_size=self.generator.cfg.patch_size)
          s, n = jax.device_get(self._loss_fn(params, batch))
          ce, count = ce + float(s), count + int(n)
        out[f"loss/{task}"] = ce / max(count, 1)
    out["loss"] = float(np.mean([out[f"loss/{t}"] for t in sorted(by_task)]))
    return out

  def predictions(self, params: Any,
                  stop: Callable[[], bool] | None = None) -> list[tuple[dict, str]] | None:
    """(example, predicted answer string) for every example; None when ``stop()``
    turned True before a batch."""
    ec = self.config.eval
    out = []
    bs = ec.batch_size
    for i in range(0, len(self.examples), bs):
      if stop is not None and stop():
        return None
      chunk = self.examples[i:i + bs]
      gen = self.generator.generate(params, chunk, max_new_tokens=ec.max_new_tokens,
                                    stop_ids=(self.tokenizer.im_end_id,))
      out += [(ex, self.tokenizer.decode(g)) for ex, g in zip(chunk, gen)]
    return out

  def run(self, params: Any, step: int | None = None, workdir: str | None = None,
          stop: Callable[[], bool] | None = None) -> dict | None:
    """Exact-match accuracy per task (``acc/<task>``), overall ``acc``, the held-out
    loss (``loss/<task>``, ``loss``) with ``eval.loss``, and time; None when ``stop()``
    (asked before every batch) turned True.

    With ``workdir`` and ``step``, process 0 also writes every prediction to
    ``{workdir}/eval/predictions_<step>.jsonl`` (task, record, prediction, answer,
    correct): what the model said, next to its score.
    """
    t0 = time.perf_counter()
    hits, counts = collections.Counter(), collections.Counter()
    rows = []
    predictions = self.predictions(params, stop)
    if predictions is None:
      return None
    for ex, pred in predictions:
      ok = scoring.exact_match(pred, ex["answer"])
      counts[ex["task"]] += 1
      hits[ex["task"]] += int(ok)
      rows.append({"task": ex["task"], "record_id": ex.get("record_id"), "prediction": pred,
                   "answer": ex["answer"], "correct": bool(ok)})
    m = {f"acc/{t}": hits[t] / counts[t] for t in sorted(counts)}
    m["acc"] = sum(hits.values()) / max(sum(counts.values()), 1)
    if self._loss_fn is not None:
      losses = self.losses(params, stop)
      if losses is None:
        return None
      m.update(losses)
    m["eval_time_s"] = time.perf_counter() - t0
    if workdir is not None and step is not None and jax.process_index() == 0:
      paths.write_text(paths.join(workdir, "eval", f"predictions_{step}.jsonl"),
                       "".join(json.dumps(r) + "\n" for r in rows))
    return m
