"""The ``neo1_0`` chat template: serialisation, placeholder expansion, labels (docs/design.md §3.3).

Layout of a sample (the release's ``tokenize_mm_chat_conversations``)::

  <|im_start|>system\\n{sys}<|im_end|>\\n            (only with a system turn)
  <|im_start|>user\\n{text}<|im_end|>\\n
  <|im_start|>assistant\\n{answer}<|im_end|>\\n      (labels on "{answer}<|im_end|>\\n")

Each turn's text pieces are tokenised separately, as the release does
(``user_info``, ``assistant\\n`` header and ``answer<|im_end|>\\n`` are three
tokenizer calls), and each ``<image>`` becomes ``<img>`` + N ``<IMG_CONTEXT>`` +
``</img>`` inserted as ids.

The release's turn rules (``VLMTrainKit/neo/data/utils.py:225-289``,
``tokenize_mm_chat_conversations``; ``data_processor.py:141-149``):

* an assistant turn with ``"is_input": true`` is context: one tokenizer call over
  ``<|im_start|>assistant\\n{text}<|im_end|>\\n``, no labels (utils.py:257);
  ``normalize_turns`` gives it the role ``ASSISTANT_INPUT``;
* a turn whose role the template does not know is skipped, the rest of the record kept
  (utils.py:252-254); here it stays in the turn list with the role ``UNKNOWN``
  (so the default-tag rule sees the record's real first turn), ``tokenize_turns`` leaves it
  out, and ``unknown_turns`` counts it for the sample's ``skipped_turns``;
* ``<image>\\n`` is prepended only to a one-image record whose *first* turn is a user turn
  without ``<image>`` (data_processor.py:143-149).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from neo_jax.data.errors import BadSample
from neo_jax.data.tokenizer import Tokenizer
from neo_jax.core.tokens import IGNORE_INDEX

IMAGE_TAG = "<image>"
VIDEO_TAG = "<video>"
# The release's roles (utils.py:232-236: human / gpt / system) and their chat-format
# synonyms (user / assistant), which the release would skip as unknown.
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "system": "system"}
ASSISTANT_INPUT = "assistant_input"  # an assistant turn marked is_input: context, no labels
UNKNOWN = "unknown"                  # a turn with a role outside ROLES: left out
_HEADER = {ASSISTANT_INPUT: "assistant"}


def normalize_turns(conversations: Any) -> list[tuple[str, str]]:
  """Release-format turns -> ``[(role, text)]``, role in user / assistant / system /
  ``ASSISTANT_INPUT`` / ``UNKNOWN`` (module docstring).

  Accepts ``[{"from": "human"|"gpt"|"system", "value": str, "is_input": bool}]`` (also
  ``role``/``content`` keys, and the roles "user" / "assistant").
  Raises:
    BadSample("empty_conversation"): no turns, no turn with a known role, or every such
      turn is empty.
    BadSample("bad_record"): a turn is not a dict or its text is not a string.
  """
  if not conversations:
    raise BadSample("empty_conversation", "no turns")
  turns = []
  for c in conversations:
    if not isinstance(c, dict):
      raise BadSample("bad_record", f"turn {c!r} is not a dict")
    frm = c.get("from", c.get("role"))
    val = c.get("value", c.get("content"))
    if not isinstance(val, str):
      raise BadSample("bad_record", f"turn with role {frm!r} / value type {type(val).__name__}")
    role = ROLES.get(frm, UNKNOWN) if isinstance(frm, str) else UNKNOWN
    if role == "assistant" and c.get("is_input", False):
      role = ASSISTANT_INPUT
    turns.append((role, val))
  if all(not v.strip() for r, v in turns if r != UNKNOWN):
    raise BadSample("empty_conversation", "no non-empty turn with a known role")
  return turns


def unknown_turns(turns: Sequence[tuple[str, str]]) -> int:
  """Number of turns left out for an unknown role (the sample's ``skipped_turns``)."""
  return sum(r == UNKNOWN for r, _ in turns)


def add_default_image_tag(turns: list[tuple[str, str]], num_images: int) -> list[tuple[str, str]]:
  """Prepends ``<image>\\n`` to the first turn of a one-image sample when that turn is a
  user turn without ``<image>`` (the release's "hack code", data_processor.py:141-149: it
  looks at the first turn only, then stops). Any other sample is returned unchanged; a
  tag count that then differs from the image count is the caller's ``image_tag_mismatch``.
  """
  if num_images != 1 or not turns:
    return turns
  role, val = turns[0]
  if role != "user" or IMAGE_TAG in val:
    return turns
  return [(role, IMAGE_TAG + "\n" + val)] + list(turns[1:])


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
    each assistant answer including its ``<|im_end|>\\n``, else -100 (``ASSISTANT_INPUT``
    turns are context; ``UNKNOWN`` turns are left out).
  Raises:
    BadSample("image_tag_mismatch"): number of ``<image>`` tags != images, or a tag in an
      ``UNKNOWN`` turn.
    BadSample("no_supervised_token"): no assistant turn without ``is_input``.
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
    if role == UNKNOWN:  # the release skips it (utils.py:252-254)
      if IMAGE_TAG in val:  # the release placed an image there (243-247) and lost it
        raise BadSample("image_tag_mismatch", "<image> in a turn with an unknown role")
      continue
    if role != "assistant":
      # One tokenizer call over "role\n{text}", as the release (an is_input assistant turn too).
      body = ([tok.im_start_id]
              + _encode_with_images(_HEADER.get(role, role) + "\n" + val, tok, image_tokens, used)
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
