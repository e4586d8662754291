"""Command line: ``python -m neo_jax.convert <command> --src ... --dst ...``.

Commands:
  import-qwen3  Hugging Face Qwen3 dir -> our Orbax checkpoint (docs/design.md §2).
  import-neo    released NEO / NEO-ov dir (model_type neo_chat) -> Orbax.
  export        Orbax parameter checkpoint, or a training work directory (its newest
                step, or ``<workdir>/checkpoints/<step>``) -> the release's Hugging
                Face dir (+ optional plain ``torch.save`` state dict). Tokenizer
                files: copied from --tokenizer_dir, else built from the embedded Qwen
                BPE ranks. The run's ``processing.json`` (the processing it trained
                with) is copied too, and its default image source's pixel bounds
                become ``vision_config.min_pixels / max_pixels`` unless given.
  random        random weights of a preset -> Orbax, generated piece by piece
                (for the 9B memory check; no float32 ``model.init``).

Every command streams: one layer (or one block of vocabulary rows) at a time is
read, converted and written, so a 9B model converts in under 2 GB of memory
(BUILD_NOTES §6); the progress bar counts bytes (MB/s).

Paths: ``--src`` / ``--dst`` may be URLs (``gs://bucket/...``): Orbax checkpoints are
read and written in place; Hugging Face folders are downloaded to / uploaded from a
temporary local folder (safetensors and tokenizers need files).

Compute dtype: an imported checkpoint's ``model_config.json`` carries
``dtype=bfloat16`` (the released sizes' compute dtype; parameters stay in the
stored dtype and are cast to ``param_dtype``, float32, when training starts from
them). For float32 parity with the release run in float32, train or evaluate with
``--config.model.dtype=float32``.

Examples:
  python -m neo_jax.convert import-qwen3 --src Qwen3-1.7B --dst ckpt/neo2b_init \\
      --num_prebuffer_layers=12
  python -m neo_jax.convert import-neo --src NEO-2B-SFT --dst ckpt/neo2b
  python -m neo_jax.convert export --src ckpt/neo2b --dst out/neo2b_hf \\
      --dtype=bfloat16 --modeling_dir to_hf/
"""

from __future__ import annotations

import sys

from neo_jax import platform as _platform

_platform.select_default_platform()
_platform.guard_network()

from absl import app, flags, logging

from neo_jax.convert import convert as cv, orbax_io
from neo_jax.core import paths

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "Source directory (HF dir for import-*, Orbax checkpoint for export).")
flags.DEFINE_string("dst", None, "Destination directory.")
flags.DEFINE_string("dtype", None, "Stored dtype: float32 | bfloat16 (default: float32 for "
                    "import-* and random, bfloat16 for export).")
flags.DEFINE_integer("num_prebuffer_layers", 0, "import-qwen3: pre-Buffer layers to add.")
flags.DEFINE_integer("vocab_size", None, "Vocabulary rows (import: grow / crop; export: crop / "
                     "zero-pad). Default: import-qwen3 grows to hold the NEO special tokens; "
                     "otherwise unchanged.")
flags.DEFINE_enum("new_rows", "zero", ["zero", "normal"], "Init of added vocabulary rows.")
flags.DEFINE_integer("seed", 0, "Seed of random weights (pre-Buffer, patch embedder, new rows).")
flags.DEFINE_string("tie_word_embeddings", None, "import-qwen3: true | false to override the "
                    "Qwen3 config (untying copies embed_tokens into lm_head).")
flags.DEFINE_string("base_preset", "neo_2b", "Preset supplying fields the HF config lacks "
                    "(vision sizes, RoPE bases) on import.")
flags.DEFINE_string("preset", "neo_9b", "random: model preset.")
flags.DEFINE_string("tokenizer_dir", None, "export: copy tokenizer files from this directory "
                    "instead of writing the built-in ones.")
flags.DEFINE_bool("write_tokenizer", True, "export without --tokenizer_dir: write the Qwen3 + "
                  "NEO tokenizer files (tokenizer.json, vocab.json, merges.txt, "
                  "tokenizer_config.json, special_tokens_map.json) built offline from the "
                  "embedded Qwen BPE ranks (docs/design.md §3.1 ids; skipped with a warning if the "
                  "model's image token ids or vocabulary do not fit them).")
flags.DEFINE_string("modeling_dir", None, "export: copy the release's to_hf *.py files from here "
                    "(for AutoModel + trust_remote_code).")
flags.DEFINE_string("torch_file", None, "export: also write a plain torch.save state dict here.")
flags.DEFINE_float("max_shard_gb", 2.0, "export: safetensors shard size limit [GiB].")
flags.DEFINE_integer("min_pixels", 65536, "export: vision_config.min_pixels (default: the "
                     "trained processing's, else 65536).")
flags.DEFINE_integer("max_pixels", 4194304, "export: vision_config.max_pixels (default: the "
                     "trained processing's, else 4194304).")
flags.DEFINE_string("processing", None, "export: the processing.json to carry (a file or a "
                    "directory holding one); default: the --src work directory's.")
flags.DEFINE_bool("overwrite", False, "Replace an existing Orbax destination.")
flags.DEFINE_bool("compress", False, "ZSTD-compress Orbax arrays (~20% smaller, 2x slower).")
flags.DEFINE_bool("progress", True, "Show a progress bar (bytes written, MB/s).")

COMMANDS = ("import-qwen3", "import-neo", "export", "random")


def _require(*names):
  missing = [n for n in names if not getattr(FLAGS, n)]
  if missing:
    raise app.UsageError(f"Missing required flags: {', '.join('--' + n for n in missing)}.")


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"Usage: python -m neo_jax.convert {{{'|'.join(COMMANDS)}}} --src ... --dst ...")
  cmd = argv[1]
  if cmd == "random":
    _require("dst")
    from neo_jax.model import config as config_lib  # pylint: disable=import-outside-toplevel
    cfg = _typed(config_lib.get_model_config(FLAGS.preset, param_dtype=FLAGS.dtype or "float32"))
    w = orbax_io.ParamWriter(FLAGS.dst, cfg, overwrite=FLAGS.overwrite, compress=FLAGS.compress)
    dtype = FLAGS.dtype or "float32"
    cv.write(cv.random_pieces(cfg, dtype=dtype, seed=FLAGS.seed), w,
             total=cv.total_bytes(cfg, dtype), desc="random", progress=FLAGS.progress)
  elif cmd == "import-qwen3":
    _require("src", "dst")
    with paths.local_input(FLAGS.src) as src:
      _import_qwen3(src)
  elif cmd == "import-neo":
    _require("src", "dst")
    with paths.local_input(FLAGS.src) as src:
      _import_neo(src)
  else:
    _require("src", "dst")
    with paths.local_output(FLAGS.dst) as dst:
      _export(dst)
  logging.info("%s done: %s", cmd, FLAGS.dst)


def _typed(cfg):
  """The typed ``ModelConfig`` of a model ``ConfigDict``: each command builds it once,
  here, and hands it to the conversion functions."""
  from neo_jax.model.model_config import ModelConfig  # pylint: disable=import-outside-toplevel
  return ModelConfig.from_config_dict(cfg)


def _import_qwen3(src: str) -> None:
  """``src``: a local Hugging Face Qwen3 folder (downloaded first for a URL)."""
  overrides = {}
  if FLAGS.tie_word_embeddings is not None:
    overrides["tie_word_embeddings"] = FLAGS.tie_word_embeddings.lower() in ("1", "true", "yes")
  dtype = FLAGS.dtype or "float32"
  cfg = _typed(cv.qwen3_config(src, num_prebuffer_layers=FLAGS.num_prebuffer_layers,
                               vocab_size=FLAGS.vocab_size, base=FLAGS.base_preset,
                               param_dtype=dtype, **overrides))
  w = orbax_io.ParamWriter(FLAGS.dst, cfg, overwrite=FLAGS.overwrite, compress=FLAGS.compress)
  cv.write(cv.qwen3_pieces(src, cfg, dtype=dtype, new_rows=FLAGS.new_rows, seed=FLAGS.seed), w,
           total=cv.total_bytes(cfg, dtype), desc="import-qwen3", progress=FLAGS.progress)


def _import_neo(src: str) -> None:
  """``src``: a local released NEO folder (downloaded first for a URL)."""
  dtype = FLAGS.dtype or "float32"
  overrides = {"vocab_size": FLAGS.vocab_size} if FLAGS.vocab_size else {}
  cfg = _typed(cv.release_config(src, base=FLAGS.base_preset, param_dtype=dtype, **overrides))
  w = orbax_io.ParamWriter(FLAGS.dst, cfg, overwrite=FLAGS.overwrite, compress=FLAGS.compress)
  cv.write(cv.release_pieces(src, cfg, dtype=dtype, new_rows=FLAGS.new_rows, seed=FLAGS.seed), w,
           total=cv.total_bytes(cfg, dtype), desc="import-neo", progress=FLAGS.progress)
  _carry_processing(src, FLAGS.dst)


def _carry_processing(src: str, dst: str) -> None:
  """Copies ``src``'s ``processing.json`` (or, for a released directory, the one its
  ``vision_config`` implies) next to the converted weights."""
  from neo_jax.data import trained_processing as tp  # pylint: disable=import-outside-toplevel
  doc = tp.read(src)
  if doc:
    tp.write(dst, doc)


def _export_source():
  """``(reader, model config, directory of its processing.json)`` of ``--src``: an Orbax
  parameter checkpoint or a training work directory (``core/run_layout.py``)."""
  from neo_jax.convert import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from neo_jax.core import run_layout  # pylint: disable=import-outside-toplevel
  workdir, step = run_layout.split_step(FLAGS.src)
  if step is not None or run_layout.is_workdir(FLAGS.src):
    reader, step = workdir_lib.params_reader(workdir, step)
    logging.info("Exporting step %d of the work directory %s.", step, workdir)
    return reader, _typed(workdir_lib.model_config(workdir)), workdir
  return orbax_io.ParamReader(FLAGS.src), _typed(orbax_io.load_config(FLAGS.src)), FLAGS.src


def _processing(src_dir: str):
  """The processing document to carry (``--processing``, else ``src_dir``'s), or None."""
  import json  # pylint: disable=import-outside-toplevel
  from neo_jax.data import trained_processing as tp  # pylint: disable=import-outside-toplevel
  where = FLAGS.processing or src_dir
  if where.endswith(".json"):
    return json.loads(paths.read_text(where))   # FileNotFoundError: a wrong --processing
  return tp.read(where)


def _export(dst: str) -> None:
  """Reads ``--src`` (an Orbax checkpoint or a work directory, local or URL) and writes
  the release's folder into ``dst`` (a local folder; uploaded after for a URL), with the
  trained processing (``processing.json``) beside it."""
  from neo_jax.data import trained_processing as tp  # pylint: disable=import-outside-toplevel
  reader, cfg, src_dir = _export_source()
  doc = _processing(src_dir)
  _, image = tp.choose(doc, num_images=1)
  pick = lambda name, default: (getattr(FLAGS, name) if FLAGS[name].present
                                else int(image.get(name, default)))
  info = cv.export_release(
      reader, cfg, dst, dtype=FLAGS.dtype or "bfloat16",
      max_shard_bytes=int(FLAGS.max_shard_gb * 1024 ** 3), vocab_size=FLAGS.vocab_size,
      tokenizer_dir=FLAGS.tokenizer_dir, write_tokenizer=FLAGS.write_tokenizer,
      modeling_dir=FLAGS.modeling_dir, torch_file=FLAGS.torch_file,
      min_pixels=pick("min_pixels", 65536), max_pixels=pick("max_pixels", 4194304),
      progress=FLAGS.progress)
  if doc:
    tp.write(dst, doc)
  logging.info("Exported %.2f GB in %d shard(s) to %s; tokenizer files: %s; processing: %s.",
               info["total_bytes"] / 1e9, len(info["shards"]), FLAGS.dst,
               ", ".join(info["tokenizer_files"]) or "none", tp.FILE_NAME if doc else "none")


def run():
  try:
    app.run(main)
  except (FileNotFoundError, FileExistsError, KeyError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  run()
