"""Scoring generated answers: exact match after normalisation, multiple choice.

``exact_match``: both strings stripped, whitespace runs collapsed, lower-cased,
trailing ``.`` removed (the trainer's held-out accuracy and
``python -m neo_jax.evaluate --metric exact`` use this one function).

``extract_choice``: the option letter a free-form answer names, in the spirit of
VLMEvalKit's ``can_infer_option`` / ``can_infer_text`` (vlmeval/utils/matching_util.py):
the one option letter that stands alone in the text (``"B"``, ``"(B) text"``, ``"the
answer is B"``); with several, a leading punctuated one (``"B. not A"``); else the
option whose text the answer is; None when it is ambiguous or absent (scored wrong,
counted as unparsed).
"""

from __future__ import annotations

import re
import string
from typing import Mapping

LETTERS = tuple(string.ascii_uppercase)


def normalize(text: str) -> str:
  """Stripped, single-spaced, lower-case, without a trailing full stop."""
  text = " ".join(text.split()).lower()
  return text[:-1].rstrip() if text.endswith(".") else text


def exact_match(prediction: str, reference: str) -> bool:
  """``normalize(prediction) == normalize(reference)``."""
  return normalize(prediction) == normalize(reference)


def extract_choice(text: str, letters: tuple[str, ...] = LETTERS[:4],
                   options: Mapping[str, str] | None = None) -> str | None:
  """The option letter ``text`` names, or None.

  Args:
    text: a generated answer.
    letters: the valid option letters (default A-D, or the keys of ``options``).
    options: optional ``{letter: option text}``.
  """
  if options:
    letters = tuple(options)
  s = text.strip()
  alone = set(re.findall(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])", s)) & set(letters)
  if len(alone) == 1:
    return alone.pop()
  # Several letters stand alone ("B. not A"): a leading, punctuated one decides.
  m = re.match(r"^\(?([A-Z])(?:\)|[.:])", s)
  if alone and m and m.group(1) in letters:
    return m.group(1)
  if options:
    hits = [k for k, v in options.items() if normalize(v) == normalize(s)]
    if len(hits) == 1:
      return hits[0]
  return None


def mcq_match(prediction: str, reference: str,
              options: Mapping[str, str] | None = None) -> tuple[bool, bool]:
  """(correct, parsed): the letters of prediction and reference agree; ``parsed`` is
  False when no letter could be read from the prediction."""
  want = extract_choice(reference, options=options) or reference.strip()[:1].upper()
  got = extract_choice(prediction, options=options)
  return got is not None and got == want, got is not None


def bare_choice(text: str) -> str | None:
  """The one upper-case letter or digit standing alone in ``text`` (``"B"``, ``"(3)"``,
  ``"The answer is 7."``), or None (none, or several different ones)."""
  alone = set(re.findall(r"(?<![A-Za-z0-9])([A-Z0-9])(?![A-Za-z0-9])", text.strip()))
  return alone.pop() if len(alone) == 1 else None


def mcq_match_without_options(prediction: str, reference: str) -> tuple[bool, bool]:
  """(correct, parsed) for a multiple-choice record that lists no options.

  A reference that is a bare letter or digit (``"B"``, ``"(3)"``, ``"7."``) is compared
  with the one letter / digit standing alone in the prediction (``bare_choice``;
  unparsed when there is none); a longer reference is option text, compared with
  ``exact_match`` (always parsed).
  """
  want = bare_choice(reference) if len(normalize(reference).strip("().")) == 1 else None
  if want is None:
    return exact_match(prediction, reference), True
  got = bare_choice(prediction)
  return got is not None and got == want, got is not None
