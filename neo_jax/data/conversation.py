"""The ``neo1_0`` chat template: serialisation, placeholder expansion, labels (NEO_SPEC §3.3).

Layout of a sample (the release's ``tokenize_mm_chat_conversations``)::

  <|im_start|>system\\n{sys}<|im_end|>\\n            (only with a system turn)
  <|im_start|>user\\n{text}<|im_end|>\\n
  <|im_start|>assistant\\n{answer}<|im_end|>\\n      (labels on "{answer}<|im_end|>\\n")

Each turn's text pieces are tokenised separately, as the release does
(``user_info``, ``assistant\\n`` header and ``answer<|im_end|>\\n`` are three
tokenizer calls), and each ``<image>`` becomes ``<img>`` + N ``<IMG_CONTEXT>`` +
``</img>`` inserted as ids.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from neo_jax.data.errors import BadSample
from neo_jax.data.tokenizer import Tokenizer
from neo_jax.core.tokens import IGNORE_INDEX

IMAGE_TAG = "<image>"
VIDEO_TAG = "<video>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "system": "system"}


def normalize_turns(conversations: Any) -> list[tuple[str, str]]:
  """Release-format turns -> ``[(role, text)]`` with role in user/assistant/system.

  Accepts ``[{"from": "human"|"gpt"|"system", "value": str}]`` (also
  ``role``/``content`` keys).
  Raises:
    BadSample("empty_conversation"): no turns, or every turn is empty.
    BadSample("bad_record"): a turn is malformed or has an unknown role.
  """
  if not conversations:
    raise BadSample("empty_conversation", "no turns")
  turns = []
  for c in conversations:
    if not isinstance(c, dict):
      raise BadSample("bad_record", f"turn {c!r} is not a dict")
    frm = c.get("from", c.get("role"))
    val = c.get("value", c.get("content"))
    if frm not in ROLES or not isinstance(val, str):
      raise BadSample("bad_record", f"turn with role {frm!r} / value type {type(val).__name__}")
    turns.append((ROLES[frm], val))
  if all(not v.strip() for _, v in turns):
    raise BadSample("empty_conversation", "all turns empty")
  return turns


def add_default_image_tag(turns: list[tuple[str, str]], num_images: int) -> list[tuple[str, str]]:
  """Prepends ``<image>\\n`` to the first user turn of a one-image sample without a tag.

  Rule of NEO_SPEC §3.3 (the release's "hack code" in ``_get_item``).
  """
  if num_images != 1 or any(IMAGE_TAG in v for _, v in turns):
    return turns
  out = list(turns)
  for i, (role, val) in enumerate(out):
    if role == "user":
      out[i] = (role, IMAGE_TAG + "\n" + val)
      break
  return out


def _encode_with_images(text: str, tok: Tokenizer, image_tokens: Sequence[int], start: int) -> list[int]:
  ids: list[int] = []
  pieces = text.split(IMAGE_TAG)
  for k, piece in enumerate(pieces):
    if piece:
      ids.extend(tok.encode(piece))
    if k < len(pieces) - 1:
      ids.append(tok.img_start_id)
      ids.extend([tok.img_context_id] * image_tokens[start + k])
      ids.append(tok.img_end_id)
  return ids


def tokenize_turns(turns: Sequence[tuple[str, str]], tok: Tokenizer, image_tokens: Sequence[int],
                   prompt_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Serialises turns with ``neo1_0`` and builds assistant-only labels.

  Args:
    turns: ``[(role, text)]`` from ``normalize_turns`` (after
      ``add_default_image_tag``); ``<image>`` tags are expanded in order.
    tok: the tokenizer.
    image_tokens: visual-token count of each image / frame, in tag order.
    prompt_only: stop after the ``<|im_start|>assistant\\n`` header of the
      last assistant turn (the generation prompt) and drop that answer.
  Returns:
    ``(input_ids [n] int32, labels [n] int32)``; labels equal the ids on
    each assistant answer including its ``<|im_end|>\\n``, else -100.
  Raises:
    BadSample("image_tag_mismatch"): number of ``<image>`` tags != images.
    BadSample("no_supervised_token"): no assistant turn.
  """
  num_tags = sum(v.count(IMAGE_TAG) for _, v in turns)
  if num_tags != len(image_tokens):
    raise BadSample("image_tag_mismatch", f"{num_tags} <image> tags for {len(image_tokens)} images")
  last_assistant = max((i for i, (r, _) in enumerate(turns) if r == "assistant"), default=-1)
  if last_assistant < 0:
    raise BadSample("no_supervised_token", "no assistant turn")
  ids: list[int] = []
  labels: list[int] = []
  nl = tok.encode("\n")
  used = 0
  for i, (role, val) in enumerate(turns):
    if role != "assistant":
      # One tokenizer call over "role\n{text}", as the release.
      body = ([tok.im_start_id] + _encode_with_images(role + "\n" + val, tok, image_tokens, used)
              + [tok.im_end_id] + nl)
      ids += body
      labels += [IGNORE_INDEX] * len(body)
    else:
      header = [tok.im_start_id] + tok.encode(role + "\n")
      ids += header
      labels += [IGNORE_INDEX] * len(header)
      if prompt_only and i == last_assistant:
        break
      body = _encode_with_images(val, tok, image_tokens, used) + [tok.im_end_id] + nl
      ids += body
      labels += body
    used += val.count(IMAGE_TAG)
  return np.asarray(ids, np.int32), np.asarray(labels, np.int32)
