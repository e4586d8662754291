"""What ``neo_jax.infer`` and ``neo_jax.evaluate`` share as command lines.

* The processing flags (image and video pixel budgets, frames, frame rate,
  ``--source``): unset, they default to the processing the checkpoint was trained
  with (``data/trained_processing.py``: a work directory's or an exported
  directory's ``processing.json``, or a released directory's ``vision_config``);
  set, they override it.
* Users' mistakes (a missing file, an ``<image>`` tag mismatch, a ``--ckpt`` that is
  not a checkpoint, an empty ``--data``) end the program with one line on stderr
  and exit status 2, not a traceback (``NEO_JAX_DEBUG=1`` shows it).
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable

from absl import flags

# flag name -> ProcessOptions field (same name), help.
PROCESSING_FLAGS = {
    "min_pixels": "Smallest resized image [pixels].",
    "max_pixels": "Pixel budget of one image (shared by several) [pixels].",
    "video_fps": "Video frames sampled per second.",
    "max_frames": "Video frames at most.",
    "video_min_pixels": "Smallest resized video frame [pixels].",
    "video_max_pixels": "Pixel budget of one video (shared by its frames) [pixels].",
}
_FLOAT = ("video_fps",)


class UserError(Exception):
  """A mistake in the command line or its inputs: printed as one line, exit status 2."""


def define_processing_flags() -> None:
  """Defines ``--source`` and the ``PROCESSING_FLAGS`` (default: unset)."""
  flags.DEFINE_string("source", None, "Training source whose processing to use (default: "
                      "the highest-weight source of the input's modality).")
  for name, help_text in PROCESSING_FLAGS.items():
    define = flags.DEFINE_float if name in _FLOAT else flags.DEFINE_integer
    define(name, None, help_text + " Default: as trained.")


def checkpoint_dir(ckpt: str) -> str:
  """The directory that holds a checkpoint's ``processing.json``: the work directory
  for ``<workdir>/checkpoints/<step>``, else ``ckpt`` itself."""
  path = ckpt.rstrip("/")
  parent = os.path.dirname(path)
  if os.path.basename(parent) == "checkpoints" and os.path.basename(path).isdigit():
    return os.path.dirname(parent)
  return path


def processing_options(ckpt: str, *, num_images: int = 0, video: bool = False,
                       source: str | None = None, explicit: dict[str, Any] | None = None,
                       log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """``ProcessOptions`` overrides for an input: the trained processing, then ``explicit``.

  Args:
    ckpt: the ``--ckpt`` path; num_images / video: the input's media.
    source: ``--source``; explicit: flags the user set ``{field: value}``.
    log: receives one line naming the processing in use.
  Raises:
    UserError: an unknown ``--source``, or a bad ``processing.json``.
  """
  from neo_jax.data import trained_processing  # pylint: disable=g-import-not-at-top
  try:
    doc = trained_processing.read(checkpoint_dir(ckpt))
    name, opts = trained_processing.choose(doc, source=source, num_images=num_images,
                                           video=video)
  except ValueError as e:
    raise UserError(str(e)) from e
  line = trained_processing.describe_choice(doc, name)
  if explicit:
    opts.update(explicit)
    line += "; overridden: " + ", ".join(f"{k}={v}" for k, v in sorted(explicit.items()))
  if log:
    log(line)
  return opts


def explicit_flags() -> dict[str, Any]:
  """The processing flags given on the command line ``{field: value}``."""
  f = flags.FLAGS
  return {k: getattr(f, k) for k in PROCESSING_FLAGS if getattr(f, k) is not None}


def user_errors(main: Callable) -> Callable:
  """Wraps an absl ``main``: users' mistakes -> ``error: ...`` on stderr, exit 2."""
  from neo_jax.data.errors import BadSample  # pylint: disable=g-import-not-at-top
  from neo_jax.data.processor import BadRecordError  # pylint: disable=g-import-not-at-top

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except (UserError, FileNotFoundError, NotADirectoryError, BadSample, BadRecordError) as e:
      if os.environ.get("NEO_JAX_DEBUG") == "1":
        raise
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(2)
  return wrapped


# flag name -> SamplingConfig field (same name), help: generation settings a user may set
# over a preset (``--preset``).
SAMPLING_FLAGS = {
    "temperature": "0 = greedy.",
    "top_k": "Keep the k most likely tokens (0 = all).",
    "top_p": "Keep the smallest set of tokens reaching this probability (1 = all).",
    "repetition_penalty": "Penalty of the tokens already generated (1 = none).",
}


def define_preset_flags() -> None:
  """Defines ``--preset`` (``neo_jax.eval.presets``: the release's evaluation processing,
  prompts and generation settings; over the trained processing, under the flags the user
  sets) and the ``SAMPLING_FLAGS`` (default: unset, i.e. greedy or the preset's)."""
  flags.DEFINE_enum("preset", None, ["neo", "neo_ov"], "The release's evaluation settings: "
                    "neo (NEO, VLMEvalKit) or neo_ov (NEO-ov, VLMEvalKit_ov).")
  for name, help_text in SAMPLING_FLAGS.items():
    define = flags.DEFINE_integer if name == "top_k" else flags.DEFINE_float
    define(name, None, help_text + " Default: greedy, or the preset's.")


def explicit_generation_flags(extra: tuple[str, ...] = ("max_new_tokens",)) -> dict[str, Any]:
  """The ``SAMPLING_FLAGS`` (and ``extra`` flags) given on the command line ``{name: value}``."""
  f = flags.FLAGS
  out = {k: getattr(f, k) for k in SAMPLING_FLAGS if getattr(f, k) is not None}
  out.update({k: getattr(f, k) for k in extra if k in f and f[k].present})
  return out

