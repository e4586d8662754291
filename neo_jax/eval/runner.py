"""The evaluation loop of ``neo_jax.evaluate``: records -> prompts -> batched decoding ->
scores.

Records are processed as they are batched (a batch holds ``batch_size`` consecutive
usable records of one generation setting), so a benchmark's images are decoded a
batch at a time. Processing options per record: the record's own (an embedded task's)
or the checkpoint's trained processing for its modality, then the preset's (per
dataset), then the user's flags (``presets.combine``). Generation per record: greedy
with ``max_new_tokens``, or the preset's sampling and length for its dataset, with the
user's flags over both. With a preset, a record without a system turn gets the
preset's system message (TSV records have theirs from the start).
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from typing import Any

from absl import logging

from neo_jax.eval import presets, scores, tsv_records
from neo_jax.infer import cli


@dataclasses.dataclass(frozen=True)
class GenerationFlags:
  """The command line's generation settings. ``explicit``: the fields the user set
  (``max_new_tokens`` and ``SamplingConfig`` fields), which win over the preset."""
  max_new_tokens: int = 16
  explicit: dict[str, Any] = dataclasses.field(default_factory=dict)
  seed: int = 0


def _score_json(metric: str, pred: str, rec: dict, answer: str) -> tuple[bool, bool]:
  from neo_jax.infer import scoring  # pylint: disable=g-import-not-at-top
  if metric == "mcq":
    if not rec.get("options"):
      return scoring.mcq_match_without_options(pred, answer)
    return scoring.mcq_match(pred, answer, rec.get("options"))
  return scoring.exact_match(pred, answer), True


def _user_prompt(rec: dict) -> tuple[str, str]:
  """``(last user turn, system message)`` of a record, as the chat template gets them."""
  from neo_jax.data import conversation as conv_lib  # pylint: disable=g-import-not-at-top
  try:
    turns = conv_lib.normalize_turns(rec.get("conversations"))
  except Exception:  # pylint: disable=broad-except  # the processor reports it
    return "", ""
  users = [v for r, v in turns if r == "user"]
  return (users[-1] if users else ""), next((v for r, v in turns if r == "system"), "")


class _Options:
  """Processing options per record (module docstring), trained ones cached by modality."""

  def __init__(self, ckpt, source, explicit, preset):
    self.ckpt, self.source, self.explicit, self.preset = ckpt, source, explicit, preset
    self.trained: dict = {}
    self.logged: set = set()

  def __call__(self, rec: dict, base: dict) -> dict:
    dataset = rec.get("_bench", {}).get("dataset", "")
    if not base:
      imgs = rec.get("image", [])
      n = (rec["_bench"]["num_images"] if "_bench" in rec else
           len(imgs) if isinstance(imgs, (list, tuple)) else int(bool(imgs)))
      key = (min(n, 2), rec.get("video") is not None)
      if key not in self.trained:
        self.trained[key] = cli.processing_options(
            self.ckpt, num_images=key[0], video=key[1], source=self.source,
            explicit={} if self.preset else self.explicit, log=lambda s: print(s, file=sys.stderr))
      base = self.trained[key]
    if self.preset is None:
      return dict(base, **self.explicit)
    if dataset not in self.logged:
      self.logged.add(dataset)
      print(presets.describe(self.preset, dataset, self.explicit), file=sys.stderr)
    return presets.combine(base, presets.dataset_processing(self.preset, dataset), self.explicit)


def _with_system(rec: dict, preset) -> dict:
  """A record without a system turn gets the preset's system message (NEO-ov's "Reason
  step by step."), as the release's evaluation sets it for every question."""
  convs = rec.get("conversations")
  if (preset is None or not preset.system or "_bench" in rec or not isinstance(convs, list)
      or any(isinstance(c, dict) and c.get("from", c.get("role")) == "system" for c in convs)):
    return rec
  return dict(rec, conversations=[{"from": "system", "value": preset.system}] + convs)


def _generation(rec: dict, gen: GenerationFlags, preset) -> tuple[Any, int]:
  """``(SamplingConfig, max_new_tokens)`` of a record."""
  from neo_jax.infer import sampling  # pylint: disable=g-import-not-at-top
  fields = [f.name for f in dataclasses.fields(sampling.SamplingConfig)]
  samp, n = {}, gen.max_new_tokens
  if preset is not None:
    samp, n = presets.dataset_sampling(preset, rec.get("_bench", {}).get("dataset", ""))
  samp.update({k: v for k, v in gen.explicit.items() if k in fields})
  n = gen.explicit.get("max_new_tokens", n)
  return sampling.SamplingConfig(**samp), n


def evaluate(items, *, ckpt: str, metric: str, batch_size: int, gen: GenerationFlags,
             dtype: str | None, strict: bool, source: str | None = None,
             explicit: dict | None = None, preset: presets.Preset | None = None
             ) -> tuple[list[dict], dict]:
  """Predictions and skip counts for ``items`` (``[(data name, record, options)]``).

  ``source`` / ``explicit``: the ``--source`` and processing flags (``infer/cli.py``);
  ``preset``: ``--preset``. A benchmark record (``"_bench"``) is scored as VLMEvalKit
  does (``scores.score_row``), others by ``metric``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  from neo_jax.data import processor as processor_lib  # pylint: disable=g-import-not-at-top
  from neo_jax.data.errors import BadSample  # pylint: disable=g-import-not-at-top
  from neo_jax.data.tokenizer import get_tokenizer  # pylint: disable=g-import-not-at-top
  from neo_jax.infer import checkpoints, decode  # pylint: disable=g-import-not-at-top
  cfg, params, tok_kind, desc = checkpoints.load(ckpt, overrides={"dtype": dtype} if dtype else {})
  print(f"Loaded {desc} (compute {cfg.dtype}); {len(items)} records.", file=sys.stderr)
  tok = get_tokenizer(tok_kind)
  generator = decode.Generator(cfg)
  options = _Options(ckpt, source, explicit or {}, preset)
  skipped, processors = collections.Counter(), {}
  if metric == "mcq":
    bare = sum(1 for _, r, _ in items if isinstance(r, dict) and "_bench" not in r
               and not r.get("options"))
    if bare:
      logging.warning("--metric mcq: %d of %d records have no 'options'; their answers are "
                      "scored as a bare letter / digit, or as the option text, against the "
                      "reference.", bare, len(items))
  out, pending, batches = [], collections.defaultdict(list), [0]
  bar = tqdm.tqdm(total=len(items), desc="evaluate", unit="record",
                  disable=not sys.stderr.isatty())

  def flush(key):
    chunk, pending[key] = pending[key], []
    if not chunk:
      return
    scfg, n = key
    rng = jax.random.fold_in(jax.random.PRNGKey(gen.seed), batches[0])
    batches[0] += 1
    ids = generator.generate(params, [c[3] for c in chunk], max_new_tokens=n,
                             stop_ids=(tok.im_end_id,), sampling_cfg=scfg, rng=rng)
    for (rid, task, rec, ex), g in zip(chunk, ids):
      pred = tok.decode(g)
      if "_bench" in rec:   # the release's chat() strips the answer
        pred = pred.strip()
      prompt, system = _user_prompt(rec)
      p = {"id": rid, "task": task, "prediction": pred, "answer": ex["answer"], "prompt": prompt}
      if system:
        p["system"] = system
      if "_bench" in rec:
        b = rec["_bench"]
        s = scores.score_row(b["row"], pred, b["dataset"], b["score_type"])
        p.update(index=b["index"], correct=s["score"] == 1, parsed=s["parsed"],
                 score=s["score"], extracted=s["extracted"])
      else:
        correct, parsed = _score_json(metric, pred, rec, ex["answer"])
        p.update(correct=bool(correct), parsed=bool(parsed))
      out.append(p)
    bar.update(len(chunk))

  for i, (name, rec, opts) in enumerate(items):
    rid = rec.get("id", rec.get("_id", f"{name}/{i}")) if isinstance(rec, dict) else f"{name}/{i}"
    try:
      if not isinstance(rec, dict) or "_bad" in rec:
        raise BadSample("bad_record", rec.get("_bad", "not an object") if isinstance(rec, dict)
                        else f"record of type {type(rec).__name__}")
      o = options(rec, opts)
      rec = _with_system(rec, preset)
      key = tuple(sorted(o.items()))
      if key not in processors:
        processors[key] = processor_lib.SampleProcessor(
            processor_lib.ProcessOptions(**o, tokenizer=tok_kind))
      ex = processors[key].process(tsv_records.materialize(rec), prompt_only=True)
    except BadSample as e:
      if strict:
        raise processor_lib.BadRecordError(f"record {rid}: {e}") from e
      skipped[e.reason] += 1
      logging.warning("Skipped record %s (%s): %s", rid, e.reason, e.detail)
      bar.update(1)
      continue
    key = _generation(rec, gen, preset)
    pending[key].append((rid, rec.get("task", name), rec, ex))
    if len(pending[key]) == batch_size:
      flush(key)
  for key in list(pending):
    flush(key)
  bar.close()
  return out, dict(skipped)


def summarize(preds: list[dict], skipped: dict, metric: str) -> dict:
  """Accuracy overall and per task, counts, unparsed answers, skips."""
  by = collections.defaultdict(list)
  for p in preds:
    by[p["task"]].append(p["correct"])
  return {"metric": metric, "records": len(preds),
          "accuracy": sum(p["correct"] for p in preds) / max(len(preds), 1),
          "per_task": {t: {"accuracy": sum(v) / len(v), "records": len(v)}
                       for t, v in sorted(by.items())},
          "unparsed": sum(not p["parsed"] for p in preds), "skipped": skipped}
