"""The Grain input pipeline: sources -> mixture -> processing -> packing -> batches.

Per source: ``MapDataset`` -> per-host slice -> shuffle -> repeat -> process;
then ``MapDataset.mix`` with the mixture weights (default text : image :
multi-image : video = 2 : 4 : 1 : 1, docs/design.md §4.1 NEO-ov stage 2) ->
``to_iter_dataset`` -> ``mp_prefetch`` (``num_workers`` processes) ->
``BytePrefetchIterDataset`` (read ahead up to ``prefetch_mib``) -> ``PackIterDataset``
(first-fit / best-fit into ``[batch, seq_len]``, in the main process). Batches follow
``neo_jax.core.batch``. The processor fits each sample to what the run holds
(``fitting.py``); the packer counts every source's records and stops a starving
source (``source_stats.py``).

Entry points: ``default_data_config``, ``make_train_iterator``,
``skip_counts``, ``make_eval_examples``, ``get_tokenizer`` (re-exported).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np
import ml_collections

from neo_jax.data import embedded
from neo_jax.data import packing
from neo_jax.data import prefetch
from neo_jax.data import processor as processor_lib
from neo_jax.data import source_stats
from neo_jax.data import sources
from neo_jax.data.errors import BadSample
from neo_jax.data.tokenizer import get_tokenizer  # pylint: disable=unused-import

MIB = 1 << 20

# Default mixture (NEO-ov text : image : multi-image : video = 2 : 4 : 1 : 1);
# the image weight is split over the three single-image tasks.
DEFAULT_MIXTURE = (("text", 2.0), ("digit", 2.0), ("aspect", 1.0), ("spatial", 1.0),
                   ("multi_image", 1.0), ("video", 1.0))


def default_data_config() -> ml_collections.ConfigDict:
  """The data config schema with the embedded mixture.

  Fields:
    tokenizer: "embedded" or a Hugging Face tokenizer directory.
    cache_dir: embedded data cache ("" = $NEO_JAX_CACHE or ~/.cache/neo_jax).
    strict: raise ``BadRecordError`` naming the record instead of skipping.
    num_workers: processes of ``mp_prefetch`` (0 = in the main process).
    worker_buffer_size: per-worker output buffer [samples] (each worker also holds
      the ``read_buffer_size`` samples it processes ahead).
    read_threads / read_buffer_size: ``grain.ReadOptions`` of each process [samples];
      kept small: the main process reads ahead by bytes (``prefetch_mib``).
    prefetch_mib: [MiB] processed samples held ahead of the packer in the main process.
    max_waiting_mib: [MiB] samples waiting in the packer for the next batch.
    starve_records / max_skip_rate / skip_rate_window: a source whose last
      ``starve_records`` records were all skipped, or that skipped more than
      ``max_skip_rate`` of its last ``skip_rate_window``, stops the run with an error
      naming it (``source_stats.py``; 0 / 1 turn the checks off).
    audit_batches: the trainer logs the per-source data summary after this many
      batches (0 = never; ``python -m neo_jax.data.audit`` prints it without a model).
    shuffle: shuffle each source (reshuffled each epoch).
    packing: "first_fit" | "best_fit"; max_waiting: see ``PackOptions``.
    options: default ``ProcessOptions`` fields: min_pixels / max_pixels
      [pixels] (pre-training 65536..4194304, docs/design.md §3.2), max_image_pixels,
      video_fps [1/s], max_frames (<= 128), video_min_pixels (per frame),
      video_max_pixels (per video), frame_list_fps, min_frames (the frame floor
      when a video is fitted to the run's limits).
    sources: ``{name: {kind, weight, task | path | tfds_*, data_root,
      options, sampling_rate}}``; ``options`` overrides the defaults per source
      (embedded tasks set their own image sizes). Weight 0 disables a source;
      ``sampling_rate`` < 1 keeps a seeded random fraction of its records.
    mixture: a mixture file (YAML / JSON, local or URL) whose sources replace
      ``sources`` (``data/mixture.py``); require_mixture: refuse to start without one.
  """
  c = ml_collections.ConfigDict()
  c.mixture = ""            # a mixture file replacing ``sources`` (data/mixture.py)
  c.require_mixture = False  # released-size recipes: refuse to start without one
  c.modality_weights = ml_collections.ConfigDict()  # default weights by source modality
  c.tokenizer = "embedded"
  c.cache_dir = ""
  c.strict = False
  c.num_workers = 0
  c.worker_buffer_size = 1
  c.read_threads = 1
  c.read_buffer_size = 2
  c.prefetch_mib = 256
  c.shuffle = True
  c.packing = "first_fit"
  c.max_waiting = 16
  c.max_waiting_mib = 256
  mon = source_stats.MonitorOptions()
  c.starve_records = mon.starve_records
  c.max_skip_rate = mon.max_skip_rate
  c.skip_rate_window = mon.skip_rate_window
  c.audit_batches = 20
  base = processor_lib.ProcessOptions()
  c.options = ml_collections.ConfigDict({f.name: getattr(base, f.name)
                                         for f in dataclasses.fields(base)
                                         if f.name not in processor_lib.RUN_FIELDS})
  c.sources = ml_collections.ConfigDict()
  for task, weight in DEFAULT_MIXTURE:
    c.sources[task] = ml_collections.ConfigDict({
        "kind": "embedded", "task": task, "weight": weight, "path": "", "data_root": "",
        "options": ml_collections.ConfigDict(embedded.TASK_OPTIONS[task])})
  return c


def source_options(data_cfg: ml_collections.ConfigDict, src_cfg: Any, *, max_tokens: int = 0,
                   max_visual_tokens: int = 0) -> processor_lib.ProcessOptions:
  """``ProcessOptions`` of one source: global defaults, then the source's overrides.

  Args:
    max_tokens / max_visual_tokens: [tokens] what one sample may hold (0 = no limit):
      larger samples are fitted (``fitting.py``).
  Raises:
    ValueError: an option name ``ProcessOptions`` does not have (names the source's
      options and the known names).
  """
  kw = dict(data_cfg.options)
  kw.update(dict(src_cfg.get("options", None) or {}))
  known = {f.name for f in dataclasses.fields(processor_lib.ProcessOptions)}
  unknown = set(kw) - known
  if unknown:
    raise ValueError(f"Unknown processing options {sorted(unknown)}; known: "
                     f"{sorted(known - set(processor_lib.RUN_FIELDS))}.")
  return processor_lib.ProcessOptions(**kw, tokenizer=data_cfg.tokenizer, strict=data_cfg.strict,
                                      max_tokens=max_tokens, max_visual_tokens=max_visual_tokens)


def sample_limit(seq_len: int, max_sample_tokens: int = 0) -> int:
  """[tokens] the longest sample a run holds: ``min(seq_len, max_sample_tokens or seq_len)``."""
  return min(seq_len, max_sample_tokens or seq_len)


def monitor_options(data_cfg: ml_collections.ConfigDict) -> source_stats.MonitorOptions:
  """The starvation-stop fields of ``data_cfg`` (defaults where absent)."""
  d = source_stats.MonitorOptions()
  return source_stats.MonitorOptions(
      starve_records=int(data_cfg.get("starve_records", d.starve_records)),
      max_skip_rate=float(data_cfg.get("max_skip_rate", d.max_skip_rate)),
      skip_rate_window=int(data_cfg.get("skip_rate_window", d.skip_rate_window)))


def make_train_dataset(data_cfg: ml_collections.ConfigDict, *, seq_len: int, batch_size: int,
                       max_supervised_tokens: int = 0, seed: int, process_index: int = 0,
                       process_count: int = 1, max_sample_tokens: int = 0,
                       max_visual_tokens: int = 0) -> packing.PackIterDataset:
  """The training ``IterDataset`` (see ``make_train_iterator``).

  Raises:
    ValueError: no source with positive weight, or bad packing options.
  """
  datasets, weights = [], []
  limit = sample_limit(seq_len, max_sample_tokens)
  for i, name in enumerate(sorted(data_cfg.sources)):
    s = data_cfg.sources[name]
    if s.weight <= 0:
      continue
    ds = host_records(data_cfg, name, seed=seed, source_index=i,
                      process_index=process_index, process_count=process_count)
    if data_cfg.shuffle:
      ds = ds.shuffle(seed=seed * 1000 + i)
    opts = source_options(data_cfg, s, max_tokens=limit, max_visual_tokens=max_visual_tokens)
    ds = ds.repeat().map(processor_lib.SampleProcessor(opts, source=name))
    datasets.append(ds)
    weights.append(float(s.weight))
  if not datasets:
    raise ValueError("data config has no source with a positive weight.")
  mixed = grain.MapDataset.mix(datasets, weights) if len(datasets) > 1 else datasets[0]
  it = mixed.to_iter_dataset(grain.ReadOptions(num_threads=data_cfg.read_threads,
                                               prefetch_buffer_size=data_cfg.read_buffer_size))
  if data_cfg.num_workers > 0:
    from absl import flags  # pylint: disable=import-outside-toplevel
    if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags (library use, tests).
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_cfg.num_workers,
                                                     per_worker_buffer_size=data_cfg.worker_buffer_size))
  it = prefetch.BytePrefetchIterDataset(it, int(data_cfg.get("prefetch_mib", 256) * MIB))
  tok = get_tokenizer(data_cfg.tokenizer)
  opts = packing.PackOptions(seq_len=seq_len, batch_size=batch_size,
                             max_supervised_tokens=max_supervised_tokens,
                             max_sample_tokens=max_sample_tokens,
                             max_visual_tokens=max_visual_tokens, algorithm=data_cfg.packing,
                             max_waiting=data_cfg.max_waiting,
                             max_waiting_bytes=int(data_cfg.get("max_waiting_mib", 0) * MIB),
                             monitor=monitor_options(data_cfg), pad_id=tok.pad_id,
                             img_context_id=tok.img_context_id)
  return packing.PackIterDataset(it, opts)


class _Take:
  """``j -> parent[keep[j]]`` (picklable, for worker processes)."""

  def __init__(self, parent, keep):
    self.parent, self.keep = parent, keep

  def __call__(self, j):
    return self.parent[int(self.keep[j])]


def host_records(data_cfg: ml_collections.ConfigDict, name: str, *, seed: int,
                 source_index: int, process_index: int = 0,
                 process_count: int = 1) -> grain.MapDataset:
  """One source's records for this host, before shuffling and repeating.

  ``sampling_rate < 1`` keeps a seeded ``int(n * rate)`` subset (the release's
  ``random.sample``); then host ``p`` of ``n`` takes records ``p, p + n, ...`` of it, so
  over the hosts every kept record of an epoch is read exactly once. A Parquet source
  with at least ``n`` row groups is split by row group instead (host ``p`` takes the kept
  records of row groups ``p, p + n, ...``), so each host reads only its own row groups.
  """
  s = data_cfg.sources[name]
  ds = sources.make_source(name, s, data_cfg.cache_dir)
  rate = float(s.get("sampling_rate", 1.0))
  keep = None
  if rate < 1.0:
    keep = np.sort(np.random.default_rng([seed, source_index]).permutation(len(ds))
                   [:int(len(ds) * rate)])
  starts = _row_group_starts(s) if process_count > 1 else None
  if starts is not None and len(starts) - 1 >= process_count:
    idx = np.arange(len(ds)) if keep is None else keep
    group = np.searchsorted(starts, idx, side="right") - 1
    mine = idx[group % process_count == process_index]
    return grain.MapDataset.range(len(mine)).map(_Take(ds, mine))
  if keep is not None:
    ds = grain.MapDataset.range(len(keep)).map(_Take(ds, keep))
  return ds[process_index::process_count]


def _row_group_starts(src_cfg) -> list[int] | None:
  """A Parquet source's row-group starts (metadata only), else None."""
  if src_cfg.get("kind", "json") != "parquet":
    return None
  from neo_jax.data.parquet_source import ParquetSource  # pylint: disable=g-import-not-at-top
  return ParquetSource(src_cfg.path).row_group_starts


def make_train_iterator(data_cfg: ml_collections.ConfigDict, *, seq_len: int, batch_size: int,
                        max_supervised_tokens: int = 0, seed: int, process_index: int = 0,
                        process_count: int = 1, max_sample_tokens: int = 0,
                        max_visual_tokens: int = 0) -> packing.PackDatasetIterator:
  """Infinite iterator of packed batches for this host.

  Args:
    data_cfg: ``default_data_config()`` (possibly overridden).
    seq_len: [tokens] per sequence; batch_size: sequences per host batch.
    max_supervised_tokens: per-sequence cap on supervised positions (0 = none).
    seed: shuffle / mixture seed; process_index / process_count: host slicing
      (each host reads ``records[process_index::process_count]``).
    max_sample_tokens: the longest sample kept [tokens], 0 = seq_len (longer ones are
      counted skips ``too_long``; ``model.max_sample_tokens``).
    max_visual_tokens: visual tokens per sequence, 0 = no cap (``model.max_visual_tokens``).
  Returns:
    a ``grain.DatasetIterator`` of batch dicts (``neo_jax.core.batch``:
    input_ids / labels / segment_ids ``[B, S] int32``, token_hw
    ``[B, S, 2] int32``, pixel_values ``[B, S, 4, 768] uint8``), with
    ``get_state() / set_state()`` (resume yields exactly the next batch) and
    ``stats()`` (see ``skip_counts``).
  """
  ds = make_train_dataset(data_cfg, seq_len=seq_len, batch_size=batch_size,
                          max_supervised_tokens=max_supervised_tokens, seed=seed,
                          process_index=process_index, process_count=process_count,
                          max_sample_tokens=max_sample_tokens,
                          max_visual_tokens=max_visual_tokens)
  return iter(ds)


def skip_counts(iterator: packing.PackDatasetIterator) -> dict[str, int]:
  """``{reason: count}`` of the samples skipped so far (bad records, too long)."""
  return {k.split("/", 1)[1]: v for k, v in iterator.stats().items() if k.startswith("skip/")}


def fit_counts(iterator: packing.PackDatasetIterator) -> dict[str, int]:
  """``{kind: count}`` of the samples fitted so far (``frames`` / ``pixels``)."""
  return {k.split("/", 1)[1]: v for k, v in iterator.stats().items() if k.startswith("fit/")}


def packing_efficiency(iterator: packing.PackDatasetIterator) -> float:
  """Non-padding tokens / all positions of the batches yielded so far."""
  st = iterator.stats()
  return st.get("tokens", 0) / max(st.get("capacity", 0), 1)


def make_eval_examples(data_cfg: ml_collections.ConfigDict, split: str = "heldout",
                       task: str | None = None, limit: int | None = None) -> list[dict]:
  """Generation prompts with reference answers, for exact-match evaluation.

  Uses the embedded sources of ``data_cfg`` (any weight) whose ``task``
  matches ``task`` (None = all).

  Args:
    split: "heldout" | "train"; limit: max examples per task (first ones).
  Returns:
    ``[{"task", "record_id", "input_ids" [n] int32, "labels" (all -100),
    "token_hw" [n, 2] int32, "pixel_values" [m, 4, 768] uint8,
    "answer": str, "answer_ids": ids of answer + "<|im_end|>"}]``; the prompt
    ends with ``<|im_start|>assistant\\n``. Decode with
    ``get_tokenizer(data_cfg.tokenizer).decode``.
  Raises:
    ValueError: no matching embedded source; BadRecordError: a held-out
    record fails (the embedded data has none).
  """
  tok = get_tokenizer(data_cfg.tokenizer)
  out = []
  names = [n for n in sorted(data_cfg.sources) if data_cfg.sources[n].kind == "embedded"
           and (task is None or data_cfg.sources[n].task == task)]
  if not names:
    raise ValueError(f"no embedded source for task {task!r} in the data config.")
  for name in names:
    s = data_cfg.sources[name]
    proc = processor_lib.SampleProcessor(source_options(data_cfg, s))
    ds = sources.make_source(name, s, data_cfg.cache_dir, split=split)
    n = len(ds) if limit is None else min(limit, len(ds))
    for i in range(n):
      rec = ds[i]
      try:
        ex = proc.process(rec, prompt_only=True)
      except BadSample as e:
        raise processor_lib.BadRecordError(f"record {rec.get('_id')}: {e}") from e
      ex.pop("num_supervised")
      ex["task"] = s.task
      ex["answer_ids"] = tok.encode(ex["answer"]) + [tok.im_end_id]
      out.append(ex)
  return out
