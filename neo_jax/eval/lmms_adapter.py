"""lmms-eval model ``neo_jax``: our checkpoints under lmms-eval 0.7.3.

Registered through lmms-eval's model entry points (``pyproject.toml``:
``[project.entry-points."lmms_eval.models"] neo_jax = "neo_jax.eval.lmms_adapter:manifest"``;
lmms-eval's ``ModelRegistryV2.load_entrypoint_manifests``): once neo_jax is installed
next to lmms-eval (``pip install --no-deps -e .`` in lmms-eval's environment, README
"Benchmarks")::

  lmms-eval --model neo_jax --model_args pretrained=/ckpt,preset=neo_ov \\
      --tasks mme --batch_size 8 --output_path out/

``--model neo_jax`` is the chat model (``NeoJaxChat``: the task's ``doc_to_messages``,
images and videos, ``generate_until``); ``--force_simple`` the simple one
(``NeoJaxSimple``: ``doc_to_visual`` + context, ``generate_until`` and
``loglikelihood``, which lmms-eval's ``multiple_choice`` tasks need).

``model_args``: ``pretrained`` (or ``ckpt``): a work directory, Orbax parameters or a
released NEO directory; ``preset``: neo | neo_ov (``presets.py``: processing, default
sampling, system message); ``max_new_tokens`` (default: the preset's, else 4096, as
lmms-eval's ``neo_ov``); ``system_prompt``; ``dtype``; ``source``; ``seed``; and the
processing flags of ``neo_jax.evaluate`` (``min_pixels``, ``max_pixels``,
``video_fps``, ``max_frames``, ...), which win over the preset, which wins over the
processing the checkpoint was trained with. Requests are decoded ``batch_size`` at a
time with the KV-cache decoder (``infer/decode.py``); the task's ``generation_kwargs``
apply per request (``chat.generation``). A request whose inputs cannot be processed
(``BadSample``) is answered with "" and counted in a warning.
"""

from __future__ import annotations

import collections
import sys
from typing import Any

from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from loguru import logger as eval_logger
from tqdm import tqdm

from neo_jax.eval import chat, presets


def manifest() -> ModelManifest:
  """The ``lmms_eval.models`` entry point's payload."""
  return ModelManifest(model_id="neo_jax",
                       chat_class_path="neo_jax.eval.lmms_adapter.NeoJaxChat",
                       simple_class_path="neo_jax.eval.lmms_adapter.NeoJaxSimple")


class _NeoJax(lmms):
  """The shared model: checkpoint, processing, batched decoding (module docstring)."""

  def __init__(self, pretrained: str | None = None, ckpt: str | None = None,
               preset: str | None = None, batch_size: int | str = 1,
               max_new_tokens: int | None = None, system_prompt: str | None = None,
               dtype: str | None = None, source: str | None = None, seed: int = 0,
               device: str | None = None, max_batch_size: int | None = None, **processing):
    super().__init__()
    del device, max_batch_size                     # JAX places the work itself
    from neo_jax.data import processor as processor_lib  # pylint: disable=g-import-not-at-top
    from neo_jax.data.tokenizer import get_tokenizer  # pylint: disable=g-import-not-at-top
    from neo_jax.infer import checkpoints, cli, decode  # pylint: disable=g-import-not-at-top
    from neo_jax.eval import likelihood  # pylint: disable=g-import-not-at-top
    path = pretrained or ckpt
    if not path:
      raise ValueError("neo_jax needs model_args pretrained=<checkpoint> (or ckpt=...).")
    known = set(cli.PROCESSING_FLAGS)
    unknown = sorted(set(processing) - known)
    if unknown:
      raise ValueError(f"neo_jax: unknown model_args {unknown}; processing options are "
                       f"{sorted(known)}.")
    self.preset = presets.get(preset or None)
    self.ckpt, self.source, self.explicit = path, source, dict(processing)
    self.cfg, self.params, self.tok_kind, desc = checkpoints.load(
        path, overrides={"dtype": dtype} if dtype else {})
    print(f"neo_jax: loaded {desc} (compute {self.cfg.dtype}).", file=sys.stderr)
    print(presets.describe(self.preset, "", self.explicit), file=sys.stderr)
    self.tok = get_tokenizer(self.tok_kind)
    self.generator = decode.Generator(self.cfg)
    self.scorer = likelihood.LogLikelihood(self.cfg)
    self.batch_size_per_gpu = int(batch_size) if str(batch_size).isdigit() else 1
    default_n = self.preset.max_new_tokens if self.preset else 4096
    self.max_new_tokens = int(max_new_tokens) if max_new_tokens else default_n
    self.system = system_prompt if system_prompt is not None else (
        self.preset.system if self.preset else "")
    self.seed = int(seed)
    self._processor_lib, self._cli = processor_lib, cli
    self._trained, self._processors = {}, {}
    self.skipped = collections.Counter()

  @property
  def batch_size(self):
    """Requests decoded together (``--batch_size``)."""
    return self.batch_size_per_gpu

  def _options(self, rec: dict, gen: chat.Generation) -> dict:
    """Trained processing for the record's modality < preset < model_args < request."""
    n = len(rec.get("image", []))
    key = (min(n, 2), "video" in rec)
    if key not in self._trained:
      self._trained[key] = self._cli.processing_options(
          self.ckpt, num_images=key[0], video=key[1], source=self.source,
          log=lambda s: print(f"neo_jax: {s}", file=sys.stderr))
    preset_opts = self.preset.processing if self.preset else {}
    return presets.combine(self._trained[key], preset_opts, dict(self.explicit, **dict(gen.processing)))

  def _prompt(self, messages, gen: chat.Generation) -> dict:
    """The processed prompt of chat messages (raises ``BadSample`` / ``ValueError``)."""
    from neo_jax.data.errors import BadSample  # pylint: disable=g-import-not-at-top
    try:
      rec = chat.messages_to_record(messages, gen.system if gen.system is not None else self.system)
    except ValueError as e:
      raise BadSample("unsupported_input", str(e)) from e
    if gen.upscale and rec.get("image"):
      from neo_jax.data import images as images_lib  # pylint: disable=g-import-not-at-top
      from PIL import Image  # pylint: disable=g-import-not-at-top
      first = images_lib.release_eval_rgb(images_lib.open_image(rec["image"][0]) if isinstance(
          rec["image"][0], str) else rec["image"][0])
      rec["image"][0] = first.resize((first.width * 2, first.height * 2), Image.Resampling.BILINEAR)
    opts = self._options(rec, gen)
    key = tuple(sorted(opts.items()))
    if key not in self._processors:
      self._processors[key] = self._processor_lib.SampleProcessor(
          self._processor_lib.ProcessOptions(**opts, tokenizer=self.tok_kind))
    return self._processors[key].process(rec, prompt_only=True)

  def _generate(self, jobs: list[tuple[Any, dict | None]]) -> list[str]:
    """Answers of ``[(chat messages, gen_kwargs)]``, in order, decoded in batches of one
    generation setting."""
    import jax  # pylint: disable=g-import-not-at-top
    from neo_jax.data.errors import BadSample  # pylint: disable=g-import-not-at-top
    out = [""] * len(jobs)
    pending = collections.defaultdict(list)
    batches = [0]

    def flush(key):
      chunk, pending[key] = pending[key], []
      if not chunk:
        return
      rng = jax.random.fold_in(jax.random.PRNGKey(self.seed), batches[0])
      batches[0] += 1
      ids = self.generator.generate(self.params, [c[1] for c in chunk], max_new_tokens=key[1],
                                    stop_ids=(self.tok.im_end_id,), sampling_cfg=key[0], rng=rng)
      for (i, _, gen), g in zip(chunk, ids):
        text = self.tok.decode(g).strip()
        out[i] = chat.strip_thinking(text) if gen.remove_think else text
      bar.update(len(chunk))

    bar = tqdm(total=len(jobs), desc="neo_jax", disable=self.rank != 0)
    for i, (messages, gen_kwargs) in enumerate(jobs):
      gen = chat.generation(gen_kwargs, self.preset, self.max_new_tokens, None)
      try:
        prompt = self._prompt(messages, gen)
      except BadSample as e:
        self.skipped[e.reason] += 1
        eval_logger.warning(f"neo_jax: request {i} answered with '' ({e.reason}: {e.detail})")
        bar.update(1)
        continue
      pending[gen.key].append((i, prompt, gen))
      if len(pending[gen.key]) == self.batch_size:
        flush(gen.key)
    for key in list(pending):
      flush(key)
    bar.close()
    if self.skipped:
      eval_logger.warning(f"neo_jax: requests answered with '' so far: {dict(self.skipped)}")
    return out

  def generate_until_multi_round(self, requests):
    """Not implemented (multi-round tasks)."""
    raise NotImplementedError("neo_jax: multi-round generation is not implemented")


class NeoJaxChat(_NeoJax):
  """Chat model: requests carry ``doc_to_messages``."""
  is_simple = False

  def generate_until(self, requests) -> list[str]:
    """Answers of chat requests ``(ctx, doc_to_messages, gen_kwargs, doc_id, task, split)``."""
    jobs = []
    for r in requests:
      _, doc_to_messages, gen_kwargs, doc_id, task, split = r.args
      jobs.append((doc_to_messages(self.task_dict[task][split][doc_id]), gen_kwargs))
    return self._generate(jobs)

  def loglikelihood(self, requests):
    """Needs the simple model (``--force_simple``)."""
    raise NotImplementedError("neo_jax: loglikelihood requests need the simple model "
                              "(lmms-eval --force_simple).")


class NeoJaxSimple(_NeoJax):
  """Simple model: requests carry a context and ``doc_to_visual``."""
  is_simple = True

  def _messages(self, ctx, doc_to_visual, doc_id, task, split):
    doc = self.task_dict[task][split][doc_id]
    return chat.visuals_to_messages(ctx, doc_to_visual(doc) if doc_to_visual else [])

  def generate_until(self, requests) -> list[str]:
    """Answers of simple requests ``(ctx, gen_kwargs, doc_to_visual, doc_id, task, split)``."""
    jobs = []
    for r in requests:
      ctx, gen_kwargs, doc_to_visual, doc_id, task, split = r.args
      jobs.append((self._messages(ctx, doc_to_visual, doc_id, task, split), gen_kwargs))
    return self._generate(jobs)

  def loglikelihood(self, requests) -> list:
    """``(-log p(continuation | context) [nats], is greedy)`` per request, the context as
    the user turn and the continuation as the start of the answer.

    lmms-eval 0.7.3 scores a multiple-choice question by the argmin of these values (its
    models return the continuation's loss; api/task.py ``process_results``), so this is
    the summed negative log-likelihood. Each pair is wrapped in a ``GenerationResult``:
    the evaluator's ``unwrap_generation_output`` turns any other non-string result into
    its ``str()``, which its ``process_results`` cannot unpack.
    """
    from lmms_eval.api.instance import GenerationResult  # pylint: disable=g-import-not-at-top
    from neo_jax.data.errors import BadSample  # pylint: disable=g-import-not-at-top
    out = [(float("inf"), False)] * len(requests)
    gen = chat.generation(None, None, 1, None)
    ready = []
    for i, r in enumerate(requests):
      ctx, target, doc_to_visual, doc_id, task, split = r.args
      doc = self.task_dict[task][split][doc_id]
      cont = target if isinstance(target, str) else str(target(doc))
      try:
        prompt = self._prompt(self._messages(ctx, doc_to_visual, doc_id, task, split), gen)
      except BadSample as e:
        self.skipped[e.reason] += 1
        eval_logger.warning(f"neo_jax: loglikelihood request {i} scored +inf loss ({e.reason})")
        continue
      ids = self.tok.encode(cont)
      if ids:
        ready.append((i, prompt, ids))
    for k in range(0, len(ready), self.batch_size):
      chunk = ready[k:k + self.batch_size]
      for (i, _, _), (logp, greedy) in zip(chunk, self.scorer(
          self.params, [c[1] for c in chunk], [c[2] for c in chunk])):
        out[i] = (-logp, greedy)
    return [GenerationResult(text=o) for o in out]
