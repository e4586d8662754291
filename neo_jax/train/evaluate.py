"""Periodic held-out evaluation: greedy answers, exact-match accuracy per task.

Examples come from ``data.pipeline.make_eval_examples`` (the embedded data's
held-out split); the answer is generated greedily with the KV-cache decoder
(``infer/decode.py``, under the training mesh: the parameters stay sharded) until
``<|im_end|>`` and compared with the reference string by ``scoring.exact_match``
(after normalisation).

Every prompt gets the host-side checks a training batch gets (``health.check_prompts``)
when the evaluator is built: one longer than ``model.max_sample_tokens`` or with more
visual tokens than ``model.max_visual_tokens`` would come back as NaN activations and
meaningless answers, so it is a named error (``health.EvalPromptError``) before the
first step. ``run(..., stop=)`` asks ``stop()`` before every batch (the trainer passes
the preemption check, called in lockstep on every process) and returns None when told
to stop.
"""

from __future__ import annotations

import collections
import json
import time
from typing import Any, Callable

import jax
import ml_collections

from neo_jax.core import paths
from neo_jax.infer import decode, scoring
from neo_jax.train import health


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
    """Exact-match accuracy per task (``acc/<task>``), overall ``acc``, and time; None
    when ``stop()`` (asked before every batch) turned True.

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
    m["eval_time_s"] = time.perf_counter() - t0
    if workdir is not None and step is not None and jax.process_index() == 0:
      paths.write_text(paths.join(workdir, "eval", f"predictions_{step}.jsonl"),
                       "".join(json.dumps(r) + "\n" for r in rows))
    return m
