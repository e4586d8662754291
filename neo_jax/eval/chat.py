"""lmms-eval requests as our records and generation settings (no lmms-eval import).

Chat messages (lmms-eval's ``doc_to_messages``: ``[{"role", "content": [{"type":
"text"|"image"|"video", "text"|"url"}]}]``) become one user turn as lmms-eval's own
``neo_ov`` model serialises them (lmms_eval/models/chat/neo_ov.py ``_serialize_messages``):
the texts in order, ``<image>\\n`` where an image stands, stripped; a system message
replaces the default one. A video (NEO-ov) becomes the record's ``video`` with a
``<video>\\n`` tag where it stands, which the processor replaces by the timestamped frame
text (``data/video.video_prompt``). The generation settings follow that model's
``_build_generation_config``: the defaults (greedy, or the preset's sampling) updated by
the task's ``generation_kwargs``; ``do_sample: false`` is greedy; sampling without a
temperature or top-k takes transformers' defaults (1.0, 50); ``min_pixels``,
``max_pixels``, ``upscale``, ``system_prompt``, ``remove_think`` are not generation
settings but per-request processing / prompt / answer options; ``until`` is ignored
(the answer ends at ``<|im_end|>``), as there.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

from neo_jax.eval import presets
from neo_jax.infer import sampling


@dataclasses.dataclass(frozen=True)
class Generation:
  """One request's settings: sampling, length, processing overrides, system message,
  whether to remove ``<think>`` blocks from the answer, the first image doubled."""
  sampling: sampling.SamplingConfig
  max_new_tokens: int
  processing: tuple = ()
  system: str | None = None
  remove_think: bool = False
  upscale: bool = False

  @property
  def key(self):
    return (self.sampling, self.max_new_tokens)


def _as_bool(v: Any) -> bool:
  return str(v).lower() == "true" if isinstance(v, str) else bool(v)


def generation(gen_kwargs: dict | None, preset: presets.Preset | None, max_new_tokens: int,
               system: str | None) -> Generation:
  """The settings of a request (module docstring).

  Args:
    gen_kwargs: the task's ``generation_kwargs`` (and ``--gen_kwargs``).
    preset: the model's preset (its sampling is the default), or None (greedy).
    max_new_tokens: the default length [tokens].
    system: the default system message (None / "" = none).
  """
  kw = dict(gen_kwargs or {})
  samp = dict(preset.sampling) if preset else {}
  do_sample = samp.get("temperature", 0) > 0
  if "do_sample" in kw:
    do_sample = _as_bool(kw["do_sample"])
  for k in ("temperature", "top_p", "repetition_penalty"):
    if kw.get(k) is not None:
      samp[k] = float(kw[k])
  if kw.get("top_k") is not None:
    samp["top_k"] = int(kw["top_k"])
  if not do_sample:
    samp["temperature"] = 0.0
  else:                          # transformers' GenerationConfig defaults when unset
    samp.setdefault("temperature", 1.0)
    samp.setdefault("top_k", 50)
  if samp.get("temperature", 0) == 0:          # greedy: the warpers do nothing
    samp = {k: v for k, v in samp.items() if k == "repetition_penalty"}
  proc = tuple(sorted((k, int(float(kw[k]))) for k in ("min_pixels", "max_pixels") if k in kw))
  sys_msg = kw.get("system_prompt", system)
  return Generation(sampling.SamplingConfig(**samp),
                    int(float(kw.get("max_new_tokens", max_new_tokens))), proc,
                    str(sys_msg).replace("\\n", "\n") if sys_msg else None,
                    _as_bool(kw.get("remove_think", False)), _as_bool(kw.get("upscale", False)))


def _content(c: Any) -> dict:
  return c if isinstance(c, dict) else c.model_dump()


def messages_to_record(messages: Sequence[Any], system: str | None = None) -> dict:
  """A release-format record (prompt only) of lmms-eval chat messages.

  Raises:
    ValueError: audio, several videos, or a video clip (start / end times).
  """
  parts, images, videos = [], [], []
  for m in messages:
    m = _content(m)
    content = m["content"] if isinstance(m["content"], list) else [
        {"type": "text", "text": m["content"]}]
    if m["role"] == "system":
      text = "\n".join(_content(c)["text"] for c in content
                       if _content(c)["type"] == "text").strip()
      system = text or system
      continue
    for c in map(_content, content):
      if c["type"] == "text":
        parts.append(c["text"])
      elif c["type"] == "image":
        parts.append("<image>\n")
        images.append(c["url"])
      elif c["type"] == "video":
        url = c["url"]
        if isinstance(url, dict) or c.get("start_time") is not None or c.get("end_time") is not None:
          raise ValueError("video clips (start / end times) are not supported")
        parts.append("<video>\n")
        videos.append(url)
      else:
        raise ValueError(f"{c['type']} inputs are not supported")
  if len(videos) > 1:
    raise ValueError(f"{len(videos)} videos in one request; one is supported")
  rec = {"conversations": ([{"from": "system", "value": system}] if system else []) + [
      {"from": "human", "value": "".join(parts).strip()}, {"from": "gpt", "value": ""}]}
  if images:
    rec["image"] = images
  if videos:
    rec["video"] = videos[0]
  return rec


def visuals_to_messages(context: str, visuals: Sequence[Any] | None) -> list[dict]:
  """A simple (non-chat) request as chat messages: the visuals, then the context
  (lmms-eval's ``_build_user_turn`` order). PIL images are images; a path is an image
  by its extension, else a video."""
  content = []
  for v in visuals or []:
    if isinstance(v, str) and not re.search(r"\.(jpe?g|png|bmp|gif|tiff|webp)$", v.lower()):
      content.append({"type": "video", "url": v})
    else:
      content.append({"type": "image", "url": v})
  return [{"role": "user", "content": content + [{"type": "text", "text": context}]}]


def strip_thinking(text: str) -> str:
  """The answer without ``<think>...</think>`` / ``<thinking>...</thinking>`` blocks."""
  text = re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL | re.IGNORECASE)
  return re.sub(r"<thinking>.*?</thinking>", "", text, flags=re.DOTALL | re.IGNORECASE).strip()
