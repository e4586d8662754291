"""Token ids shared by the tokenizer, the packer, the model and the converters.

Source: docs/design.md §3.1 (Qwen3's 151643 BPE ranks, Qwen3's added tokens from
151643, then NEO's added tokens from 151669; the release's
``ALL_SPECIAL_TOKEN_LIST``) and §3.5 (labels).
"""

from __future__ import annotations

QWEN3_VOCAB_SIZE = 151936    # rows of the released embedding / LM head
ENDOFTEXT_TOKEN_ID = 151643  # ``<|endoftext|>``: Qwen3's BOS / pad token
PAD_TOKEN_ID = ENDOFTEXT_TOKEN_ID
IM_START_TOKEN_ID = 151644   # ``<|im_start|>``
IM_END_TOKEN_ID = 151645     # ``<|im_end|>``
IMG_CONTEXT_TOKEN_ID = 151669  # ``<IMG_CONTEXT>``: one per visual token
IMG_START_TOKEN_ID = 151670    # ``<img>``
IMG_END_TOKEN_ID = 151671      # ``</img>``
NEO_LAST_SPECIAL_TOKEN_ID = 151681  # ``<|interpreter|>``: the vocabulary holds ids up to it

IGNORE_INDEX = -100  # label of a position that is not supervised
