"""The trainer's process-local input: which iterator ``config.data.kind`` names.

Each process reads its own slice of the data (``jax.process_index()`` of
``jax.process_count()``) and yields numpy batches of ``batch_size / processes``
rows; ``Setup.global_batch`` makes global arrays of them.
"""

from __future__ import annotations

import jax
import ml_collections


def data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config.data`` with its mixture file applied (``data/mixture.apply_mixture``).

  Raises:
    ValueError: a recipe that requires a mixture was given none (the message says how
      to give one), or a malformed mixture file.
  """
  if config.data.get("kind", "random") != "pipeline":
    return config.data
  from neo_jax.data import mixture  # pylint: disable=g-import-not-at-top
  return mixture.apply_mixture(config.data)


def make_data_iterator(config: ml_collections.ConfigDict, seq_len: int | None = None):
  """The process-local, checkpointable training iterator named by ``config.data.kind``.

  Args:
    seq_len: [tokens per row], default ``config.seq_len`` (a context-schedule phase's
      length otherwise: ``context_schedule.py``).
  Returns:
    A Grain ``DatasetIterator`` of batch dicts (``neo_jax.core.batch``).

  Raises:
    ValueError: global batch not divisible by the process count, or unknown kind.
  """
  pc, pi = jax.process_count(), jax.process_index()
  if config.batch_size % pc:
    raise ValueError(f"batch_size={config.batch_size} is not divisible by {pc} processes.")
  local_bs = config.batch_size // pc
  seq_len = int(seq_len or config.seq_len)
  m = config.model
  if config.data.kind == "random":
    from neo_jax.data import random_batches  # pylint: disable=g-import-not-at-top
    return random_batches.make_random_iterator(
        batch_size=local_bs, seq_len=seq_len, vocab_size=m.vocab_size,
        img_start_id=m.img_start_token_id, img_context_id=m.img_context_token_id,
        img_end_id=m.img_end_token_id, seed=config.train.seed, process_index=pi)
  if config.data.kind == "pipeline":
    from neo_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    return pipeline.make_train_iterator(
        data_config(config), seq_len=seq_len, batch_size=local_bs,
        max_supervised_tokens=m.max_supervised_tokens, seed=config.train.seed,
        process_index=pi, process_count=pc, max_sample_tokens=m.get("max_sample_tokens", 0),
        max_visual_tokens=m.get("max_visual_tokens", 0))
  raise ValueError(f"Unknown data.kind {config.data.kind!r}; use 'pipeline' or 'random'.")


def switch_seq_len(data_iter, config: ml_collections.ConfigDict, seq_len: int):
  """The iterator of a new context phase: built at ``seq_len`` and set to ``data_iter``'s
  state, so it continues with the same records, packed (and fitted) at the new length.
  ``data_iter`` is closed."""
  state = data_iter.get_state()
  if hasattr(data_iter, "close"):
    data_iter.close()
  new = make_data_iterator(config, seq_len)
  new.set_state(state)
  return new


def pipeline_metrics(data_iter) -> dict:
  """The pipeline's counters for the logs: ``skipped/<reason>`` (records skipped so
  far), ``fitted_frames`` / ``fitted_pixels`` (samples fitted to the run's limits so
  far), ``skipped_turns`` (turns with an unknown role dropped) and
  ``packing_efficiency`` (non-padding tokens / positions of the batches yielded so
  far); {} for random data (an iterator without ``stats``)."""
  try:
    st = data_iter.stats()
  except AttributeError:
    return {}
  out = {f"skipped/{k.split('/', 1)[1]}": v for k, v in st.items() if k.startswith("skip/")}
  out.update({f"fitted_{k.split('/', 1)[1]}": v for k, v in st.items() if k.startswith("fit/")})
  if st.get("skipped_turns"):
    out["skipped_turns"] = st["skipped_turns"]
  out["packing_efficiency"] = st.get("tokens", 0) / max(st.get("capacity", 0), 1)
  return out


def write_processing(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes ``<workdir>/processing.json``: each source's processing options, so that
  ``neo_jax.infer`` / ``evaluate`` / ``convert export`` use what the model trained with
  (``data/trained_processing.py``). Nothing for random data."""
  if config.data.get("kind", "random") != "pipeline":
    return
  from neo_jax.data import pipeline, trained_processing  # pylint: disable=g-import-not-at-top
  trained_processing.write(workdir, trained_processing.describe(data_config(config),
                                                                pipeline.source_options))


def data_summary(data_iter, config: ml_collections.ConfigDict) -> str | None:
  """The per-source table of ``python -m neo_jax.data.audit`` for the batches read so
  far (``data/audit.py``), or None for random data."""
  if not hasattr(data_iter, "monitor"):
    return None
  from neo_jax.data import audit  # pylint: disable=g-import-not-at-top
  return audit.summary_table(data_iter.monitor.summary(),
                             audit.requested_weights(data_config(config)))
