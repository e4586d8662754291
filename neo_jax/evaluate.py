"""CLI: score a checkpoint on benchmark-style records.

    python -m neo_jax.evaluate --ckpt DIR --data records.jsonl[,embedded:digit,...] \\
        --metric exact|mcq --out DIR [--limit N] [--batch_size 16]
    python -m neo_jax.evaluate --ckpt DIR --data MMBench_DEV_EN.tsv --preset neo --out DIR

``--data``: comma-separated; a VLMEvalKit TSV (``X.tsv``: the release's prompts for the
dataset named by the file, or ``--dataset_type``; scored as VLMEvalKit's exact matching;
``<model>_<X>.xlsx`` or ``.tsv`` written for VLMEvalKit's own scripts; ``eval/``), a
release-format JSON / JSONL file (each record's last
assistant turn is the reference answer; images / videos relative to the record's
``data_path``, else ``--data_root``, else the file's folder; an optional
``"options": {"A": ...}`` helps multiple choice) or ``embedded:<task>`` (the
embedded data set's held-out split with the task's pixel options, what the
trainer's evaluator scores). Each record's ``task`` (else the data name) groups the
summary.

Writes ``--out/predictions.jsonl`` (id, task, prediction, answer, correct, the prompt's
user turn and system message; a TSV row's index, score, extracted answer) and
``--out/summary.json`` (accuracy overall and per task, counts, skipped records by
reason); a bad record is a counted skip (``--strict`` raises). Several processes
(``--coordinator_address/--num_processes/--process_id``, or ``launch/local.py``)
split the records; each decodes its share on its local devices, process 0 merges.

Images and videos of JSON records are processed as the model was trained (the
checkpoint's ``processing.json``, per record modality; one log line names the training
source, ``--source`` picks another; ``--max_pixels``, ``--max_frames`` ... override);
``embedded:<task>`` uses the task's own options. ``--metric mcq`` on records without
``options`` says so once and compares a bare letter / digit, or the option text, with
the reference. ``--preset neo|neo_ov`` applies the release's evaluation processing,
prompts and generation settings (``eval/presets.py``) over the trained processing; the
processing, sampling and ``--max_new_tokens`` flags a user sets win over the preset (one
log line says which applied). A missing ``--data`` file, no records, a TSV that is not
VLMEvalKit's, or a ``--ckpt`` that is not a checkpoint prints one line and exits with
status 2.
"""

from neo_jax import platform as _platform

_platform.select_default_platform()
_platform.guard_network()

import collections  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
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
_DTYPE_TSV = flags.DEFINE_enum("dataset_type", None, ["MCQ", "Y/N", "VQA"],
                               "VLMEvalKit dataset type of the TSVs (default: from the name).")
_MODEL_NAME = flags.DEFINE_string("model_name", None, "Model name of the VLMEvalKit result file "
                                  "(default: the --ckpt folder's name).")
_RESULT_FORMAT = flags.DEFINE_enum("result_format", "auto", ["auto", "xlsx", "tsv"],
                                   "VLMEvalKit result file: xlsx (needs openpyxl) or tsv.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of sampling.")
cli.define_processing_flags()
cli.define_preset_flags()
flags.mark_flags_as_required(["ckpt", "data", "out"])


def load_records(spec: str, data_root: str | None, limit: int, tables: dict | None = None,
                 dataset_type: str | None = None, preset=None) -> list[tuple[str, dict, dict]]:
  """``[(data name, record, ProcessOptions overrides)]`` of one ``--data`` entry; a TSV's
  ``eval.tsv_records.Table`` is added to ``tables``.

  Raises:
    cli.UserError: a file that does not exist or is not JSON / a VLMEvalKit TSV, an
      unknown task.
  """
  from neo_jax.data import embedded  # pylint: disable=g-import-not-at-top
  if spec.endswith(".tsv"):
    from neo_jax.eval import tsv_records  # pylint: disable=g-import-not-at-top
    if not os.path.exists(spec):
      raise cli.UserError(f"--data file {spec} does not exist.")
    try:
      items, table = tsv_records.load(spec, data_root, limit, dataset_type, preset)
    except (ValueError, UnicodeDecodeError) as e:
      raise cli.UserError(f"--data {spec}: {e}") from e
    if tables is not None:
      tables[table.name] = table
    return items
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
  from neo_jax.eval import presets, runner  # pylint: disable=g-import-not-at-top
  try:
    preset = presets.get(flags.FLAGS.preset)
  except ValueError as e:
    raise cli.UserError(str(e)) from e
  tables = {}
  items = [it for spec in _DATA.value.split(",") if spec.strip()
           for it in load_records(spec.strip(), _DATA_ROOT.value, _LIMIT.value, tables,
                                  _DTYPE_TSV.value, preset)]
  if not items:
    raise cli.UserError(f"--data={_DATA.value!r} names no records.")
  t0 = time.perf_counter()
  gen = runner.GenerationFlags(_MAX_NEW.value, cli.explicit_generation_flags(), _SEED.value)
  preds, skipped = runner.evaluate(items[pi::pc], ckpt=_CKPT.value, metric=_METRIC.value,
                                   batch_size=_BATCH.value, gen=gen, dtype=_DTYPE.value,
                                   strict=_STRICT.value, source=flags.FLAGS.source,
                                   explicit=cli.explicit_flags(), preset=preset)
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
  summary = runner.summarize(all_preds, dict(all_skipped), _METRIC.value)
  if tables:
    summary["benchmarks"] = _benchmarks(tables, all_preds)
  summary["wall_s"] = time.perf_counter() - t0
  with open(os.path.join(_OUT.value, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(json.dumps({k: summary[k] for k in ("metric", "records", "accuracy", "per_task",
                                            "unparsed", "skipped", "benchmarks")
                    if k in summary}, indent=2))


def _benchmarks(tables: dict, preds: list[dict]) -> dict:
  """Per TSV: VLMEvalKit's scores (``eval/scores.py``) and its result file's path."""
  from neo_jax.eval import scores  # pylint: disable=g-import-not-at-top
  from neo_jax.eval import vlmevalkit as vk  # pylint: disable=g-import-not-at-top
  model = _MODEL_NAME.value or os.path.basename(cli.checkpoint_dir(_CKPT.value)) or "neo_jax"
  out = {}
  for name, t in tables.items():
    mine = {p["index"]: p for p in preds if p["task"] == name and "index" in p}
    res = scores.summarize(name, t.score_type, t.rows, mine)
    res["prompt_type"], res["prompts"], res["system"] = t.prompt_type, t.style, t.system
    res["result_file"] = vk.write_result(
        os.path.join(_OUT.value, f"{model}_{name}"), t.columns, t.rows,
        {i: p["prediction"] for i, p in mine.items()}, _RESULT_FORMAT.value)
    out[name] = res
  return out


if __name__ == "__main__":
  app.run(main)
