"""CLI: ``python -m neo_jax.infer --ckpt DIR --prompt "..." [--image a.jpg ...] [--video v.mp4]``.

Loads the weights (a training work directory, an Orbax parameter checkpoint from
``neo_jax.convert``, or a released NEO Hugging Face directory), builds the
``neo1_0`` chat prompt with the images or video (native resolution, the data
pipeline's processing), decodes with the KV cache and prints the answer.
``--interactive`` keeps a multi-turn chat on stdin (the images belong to the first
turn). Greedy by default; ``--temperature / --top_k / --top_p / --seed`` sample.
Imported checkpoints compute in bfloat16; ``--dtype=float32`` for float32.

Images and videos are processed as the model was trained (the checkpoint's
``processing.json``: pixel budgets, frames, frame rate; one line on stderr names the
training source used, ``--source`` picks another); ``--max_pixels`` etc. override.
Time to first token and tokens/s go to stderr. A mistake in the inputs (missing
file, ``<image>`` tags that do not match the images, a ``--ckpt`` that is not a
checkpoint) prints one line and exits with status 2.
"""

from neo_jax import platform as _platform

_platform.select_default_platform()
_platform.guard_network()

import sys  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

from neo_jax.infer import cli  # noqa: E402

_CKPT = flags.DEFINE_string("ckpt", None, "Work directory, Orbax params dir or NEO HF dir.")
_PROMPT = flags.DEFINE_string("prompt", None, "The question (first turn with --interactive).")
_IMAGE = flags.DEFINE_multi_string("image", [], "Image file(s), in order (one <image> each).")
_VIDEO = flags.DEFINE_string("video", None, "A video file (frames sampled at --video_fps).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Tokens to generate at most.")
_TEMP = flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 = all).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of sampling.")
_DTYPE = flags.DEFINE_string("dtype", None, "Compute dtype override (float32 | bfloat16).")
cli.define_processing_flags()
_INTERACTIVE = flags.DEFINE_bool("interactive", False, "Chat on stdin after the first answer.")
_SHOW_IDS = flags.DEFINE_bool("show_ids", False, "Also print the generated token ids (stderr).")
flags.mark_flags_as_required(["ckpt"])


def _report(timing: dict) -> None:
  n = int(timing.get("new_tokens", 0))
  rate = n / timing["decode_s"] if timing.get("decode_s") else float("nan")
  print(f"First token after {timing['prefill_s']:.2f} s; {n} tokens in "
        f"{timing['prefill_s'] + timing['decode_s']:.2f} s ({rate:.1f} tokens/s while "
        f"decoding); compiling took {timing['compile_s']:.1f} s.", file=sys.stderr, flush=True)


@cli.user_errors
def main(argv):
  del argv
  from absl import logging  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO.
  import jax  # pylint: disable=g-import-not-at-top
  from neo_jax.data import processor as processor_lib  # pylint: disable=g-import-not-at-top
  from neo_jax.data.tokenizer import get_tokenizer  # pylint: disable=g-import-not-at-top
  from neo_jax.infer import checkpoints, decode, sampling  # pylint: disable=g-import-not-at-top
  question = _PROMPT.value
  if question is None and not _INTERACTIVE.value:
    raise cli.UserError("give --prompt, or --interactive.")
  if _IMAGE.value and _VIDEO.value:
    raise cli.UserError("give --image or --video, not both.")
  from neo_jax.core import paths  # pylint: disable=g-import-not-at-top
  for path in list(_IMAGE.value) + ([_VIDEO.value] if _VIDEO.value else []):
    if not paths.exists(path):
      raise cli.UserError(f"no such file: {path}")
  n_tags = (question or "").count("<image>")
  if n_tags and n_tags != len(_IMAGE.value):
    raise cli.UserError(f"the prompt has {n_tags} <image> tags for {len(_IMAGE.value)} "
                        "--image files; give one tag per image, or none (then the images "
                        "come first).")
  if question is not None and not n_tags and len(_IMAGE.value) > 1:
    question = "<image>\n" * len(_IMAGE.value) + question
  log = lambda line: print(line, file=sys.stderr, flush=True)
  opts = cli.processing_options(_CKPT.value, num_images=len(_IMAGE.value),
                                video=bool(_VIDEO.value), source=flags.FLAGS.source,
                                explicit=cli.explicit_flags(), log=log)
  overrides = {"dtype": _DTYPE.value} if _DTYPE.value else {}
  t0 = time.perf_counter()
  cfg, params, tok_kind, desc = checkpoints.load(_CKPT.value, overrides=overrides)
  print(f"Loaded {desc} in {time.perf_counter() - t0:.1f} s (compute {cfg.dtype}).",
        file=sys.stderr, flush=True)
  tok = get_tokenizer(tok_kind)
  proc = processor_lib.SampleProcessor(processor_lib.ProcessOptions(
      **opts, tokenizer=tok_kind, strict=True))
  gen = decode.Generator(cfg)
  scfg = sampling.SamplingConfig(_TEMP.value, _TOP_K.value, _TOP_P.value)
  record = {"conversations": [], "_id": "cli"}
  if _IMAGE.value:
    record["image"] = list(_IMAGE.value)
  if _VIDEO.value:
    record["video"] = _VIDEO.value
  rng = jax.random.PRNGKey(_SEED.value)
  while True:
    if question is None:
      try:
        question = input("> ")
      except EOFError:
        break
      if not question.strip():
        break
    record["conversations"] += [{"from": "human", "value": question},
                                {"from": "gpt", "value": ""}]
    prompt = proc.process(record, prompt_only=True)
    print(f"Prompt: {len(prompt['input_ids'])} tokens ({len(prompt['pixel_values'])} visual).",
          file=sys.stderr, flush=True)
    rng, sub = jax.random.split(rng)
    ids = gen.generate(params, [prompt], max_new_tokens=_MAX_NEW.value,
                       stop_ids=(tok.im_end_id,), sampling_cfg=scfg, rng=sub)[0]
    answer = tok.decode(ids)
    _report(gen.timing)
    if _SHOW_IDS.value:
      print(f"ids: {ids}", file=sys.stderr, flush=True)
    print(answer, flush=True)
    record["conversations"][-1]["value"] = answer
    question = None
    if not _INTERACTIVE.value:
      break


if __name__ == "__main__":
  app.run(main)
