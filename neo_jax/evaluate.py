"""CLI: score a checkpoint on benchmark-style records.

    python -m neo_jax.evaluate --ckpt DIR --data records.jsonl[,embedded:digit,...] \\
        --metric exact|mcq --out DIR [--limit N] [--batch_size 16]

``--data``: comma-separated; a release-format JSON / JSONL file (each record's last
assistant turn is the reference answer; images / videos relative to the record's
``data_path``, else ``--data_root``, else the file's folder; an optional
``"options": {"A": ...}`` helps multiple choice) or ``embedded:<task>`` (the
embedded data set's held-out split with the task's pixel options, what the
trainer's evaluator scores). Each record's ``task`` (else the data name) groups the
summary.

Writes ``--out/predictions.jsonl`` (id, task, prediction, answer, correct) and
``--out/summary.json`` (accuracy overall and per task, counts, skipped records by
reason); a bad record is a counted skip (``--strict`` raises). Several processes
(``--coordinator_address/--num_processes/--process_id``, or ``launch/local.py``)
split the records; each decodes its share on its local devices, process 0 merges.

Images and videos of JSON records are processed as the model was trained (the
checkpoint's ``processing.json``, per record modality; one log line names the training
source, ``--source`` picks another; ``--max_pixels``, ``--max_frames`` ... override);
``embedded:<task>`` uses the task's own options. ``--metric mcq`` on records without
``options`` says so once and compares a bare letter / digit, or the option text, with
the reference. A missing ``--data`` file, no records, or a ``--ckpt`` that is not a
checkpoint prints one line and exits with status 2.
"""

from neo_jax import platform as _platform

_platform.select_default_platform()
_platform.guard_network()

import collections  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from absl import app, flags, logging  # noqa: E402

from neo_jax.infer import cli  # noqa: E402

_CKPT = flags.DEFINE_string("ckpt", None, "Work directory, Orbax params dir or NEO HF dir.")
_DATA = flags.DEFINE_string("data", None, "Comma-separated JSON/JSONL files or embedded:<task>.")
_DATA_ROOT = flags.DEFINE_string("data_root", None, "Root of relative media paths.")
_METRIC = flags.DEFINE_enum("metric", "exact", ["exact", "mcq"], "Scoring.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Records per data name (0 = all).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Prompts decoded together.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 16, "Tokens per answer at most.")
_DTYPE = flags.DEFINE_string("dtype", None, "Compute dtype override (float32 | bfloat16).")
_STRICT = flags.DEFINE_bool("strict", False, "Raise on a bad record instead of skipping it.")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index.")
cli.define_processing_flags()
flags.mark_flags_as_required(["ckpt", "data", "out"])


def load_records(spec: str, data_root: str | None, limit: int) -> list[tuple[str, dict, dict]]:
  """``[(data name, record, ProcessOptions overrides)]`` of one ``--data`` entry.

  Raises:
    cli.UserError: a file that does not exist or is not JSON, an unknown task.
  """
  from neo_jax.data import embedded  # pylint: disable=g-import-not-at-top
  if spec.startswith("embedded:"):
    task = spec.split(":", 1)[1]
    if task not in embedded.TASKS:
      raise cli.UserError(f"--data {spec}: no embedded task {task!r}; tasks: "
                          f"{', '.join(embedded.TASKS)}.")
    recs = embedded.load_records(task, "heldout")
    opts = dict(embedded.TASK_OPTIONS[task])
    name = task
  else:
    if not os.path.exists(spec):
      raise cli.UserError(f"--data file {spec} does not exist.")
    with open(spec) as f:
      text = f.read()
    if spec.endswith(".json"):
      try:
        recs = json.loads(text)
      except json.JSONDecodeError as e:
        raise cli.UserError(f"--data {spec} is not valid JSON ({e}); use .jsonl for one "
                            "record per line.") from e
      if not isinstance(recs, list):
        raise cli.UserError(f"--data {spec} must hold a JSON list of records.")
    else:
      recs = []
      for i, line in enumerate(text.splitlines()):
        if line.strip():
          try:
            recs.append(json.loads(line))
          except json.JSONDecodeError as e:
            recs.append({"_bad": f"line {i + 1}: {e}"})
    root = data_root or os.path.dirname(os.path.abspath(spec))
    for r in recs:
      if isinstance(r, dict):
        r.setdefault("data_path", root)
    opts, name = {}, os.path.splitext(os.path.basename(spec))[0]
  recs = recs[:limit] if limit else recs
  return [(name, r, opts) for r in recs]


def _score(metric: str, pred: str, rec: dict, answer: str) -> tuple[bool, bool]:
  from neo_jax.infer import scoring  # pylint: disable=g-import-not-at-top
  if metric == "mcq":
    if not rec.get("options"):
      return scoring.mcq_match_without_options(pred, answer)
    return scoring.mcq_match(pred, answer, rec.get("options"))
  return scoring.exact_match(pred, answer), True


def _record_options(ckpt: str, rec: dict, cache: dict, source: str | None,
                    explicit: dict) -> dict:
  """Trained processing for a JSON record's modality (cached per modality)."""
  imgs = rec.get("image", []) if isinstance(rec, dict) else []
  n = len(imgs) if isinstance(imgs, (list, tuple)) else int(bool(imgs))
  key = (min(n, 2), isinstance(rec, dict) and rec.get("video") is not None)
  if key not in cache:
    cache[key] = cli.processing_options(ckpt, num_images=key[0], video=key[1], source=source,
                                        explicit=explicit, log=lambda s: print(s, file=sys.stderr))
  return cache[key]


def evaluate(items, *, ckpt: str, metric: str, batch_size: int, max_new_tokens: int,
             dtype: str | None, strict: bool, source: str | None = None,
             explicit: dict | None = None) -> tuple[list[dict], dict]:
  """Predictions and skip counts for ``items`` (``load_records`` entries).

  ``source`` / ``explicit``: the ``--source`` and processing flags (``infer/cli.py``);
  JSON records default to the checkpoint's trained processing.
  """
  import tqdm  # pylint: disable=g-import-not-at-top
  from neo_jax.data import processor as processor_lib  # pylint: disable=g-import-not-at-top
  from neo_jax.data.errors import BadSample  # pylint: disable=g-import-not-at-top
  from neo_jax.data.tokenizer import get_tokenizer  # pylint: disable=g-import-not-at-top
  from neo_jax.infer import checkpoints, decode  # pylint: disable=g-import-not-at-top
  cfg, params, tok_kind, desc = checkpoints.load(ckpt, overrides={"dtype": dtype} if dtype else {})
  print(f"Loaded {desc} (compute {cfg.dtype}); {len(items)} records.", file=sys.stderr)
  tok = get_tokenizer(tok_kind)
  gen = decode.Generator(cfg)
  skipped = collections.Counter()
  prompts, processors, trained = [], {}, {}
  explicit = explicit or {}
  if metric == "mcq":
    bare = sum(1 for _, r, _ in items if isinstance(r, dict) and not r.get("options"))
    if bare:
      logging.warning("--metric mcq: %d of %d records have no 'options'; their answers are "
                      "scored as a bare letter / digit, or as the option text, against the "
                      "reference.", bare, len(items))
  for i, (name, rec, opts) in enumerate(items):
    rid = rec.get("id", rec.get("_id", f"{name}/{i}")) if isinstance(rec, dict) else f"{name}/{i}"
    try:
      if not isinstance(rec, dict) or "_bad" in rec:
        raise BadSample("bad_record", rec.get("_bad", "not an object") if isinstance(rec, dict)
                        else f"record of type {type(rec).__name__}")
      opts = (dict(opts, **explicit) if opts else
              _record_options(ckpt, rec, trained, source, explicit))
      key = tuple(sorted(opts.items()))
      if key not in processors:
        processors[key] = processor_lib.SampleProcessor(
            processor_lib.ProcessOptions(**opts, tokenizer=tok_kind))
      ex = processors[key].process(rec, prompt_only=True)
    except BadSample as e:
      if strict:
        raise processor_lib.BadRecordError(f"record {rid}: {e}") from e
      skipped[e.reason] += 1
      logging.warning("Skipped record %s (%s): %s", rid, e.reason, e.detail)
      continue
    prompts.append((rid, rec.get("task", name), rec, ex))
  out = []
  for k in tqdm.tqdm(range(0, len(prompts), batch_size), desc="evaluate", unit="batch",
                     disable=not sys.stderr.isatty()):
    chunk = prompts[k:k + batch_size]
    ids = gen.generate(params, [c[3] for c in chunk], max_new_tokens=max_new_tokens,
                       stop_ids=(tok.im_end_id,))
    for (rid, task, rec, ex), g in zip(chunk, ids):
      pred = tok.decode(g)
      correct, parsed = _score(metric, pred, rec, ex["answer"])
      out.append({"id": rid, "task": task, "prediction": pred, "answer": ex["answer"],
                  "correct": bool(correct), "parsed": bool(parsed)})
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


@cli.user_errors
def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  import jax  # pylint: disable=g-import-not-at-top
  if _COORD.value:
    from neo_jax.train import distributed  # pylint: disable=g-import-not-at-top
    distributed.initialize(_COORD.value, _NPROC.value, _PID.value)
  pi, pc = jax.process_index(), jax.process_count()
  items = [it for spec in _DATA.value.split(",") if spec.strip()
           for it in load_records(spec.strip(), _DATA_ROOT.value, _LIMIT.value)]
  if not items:
    raise cli.UserError(f"--data={_DATA.value!r} names no records.")
  t0 = time.perf_counter()
  preds, skipped = evaluate(items[pi::pc], ckpt=_CKPT.value, metric=_METRIC.value,
                            batch_size=_BATCH.value, max_new_tokens=_MAX_NEW.value,
                            dtype=_DTYPE.value, strict=_STRICT.value,
                            source=flags.FLAGS.source, explicit=cli.explicit_flags())
  os.makedirs(_OUT.value, exist_ok=True)
  part = os.path.join(_OUT.value, f"predictions-{pi}-of-{pc}.jsonl")
  with open(part, "w") as f:
    f.write("".join(json.dumps(p) + "\n" for p in preds))
  with open(part + ".skipped.json", "w") as f:
    json.dump(skipped, f)
  if pc > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("neo_jax.evaluate: predictions written")
  if pi != 0:
    return
  all_preds, all_skipped = [], collections.Counter()
  for i in range(pc):
    part = os.path.join(_OUT.value, f"predictions-{i}-of-{pc}.jsonl")
    with open(part) as f:
      all_preds += [json.loads(line) for line in f]
    with open(part + ".skipped.json") as f:
      all_skipped.update(json.load(f))
    os.remove(part)
    os.remove(part + ".skipped.json")
  with open(os.path.join(_OUT.value, "predictions.jsonl"), "w") as f:
    f.write("".join(json.dumps(p) + "\n" for p in all_preds))
  summary = summarize(all_preds, dict(all_skipped), _METRIC.value)
  summary["wall_s"] = time.perf_counter() - t0
  with open(os.path.join(_OUT.value, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(json.dumps({k: summary[k] for k in ("metric", "records", "accuracy", "per_task",
                                            "unparsed", "skipped")}, indent=2))


if __name__ == "__main__":
  app.run(main)
