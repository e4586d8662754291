"""The token ids a set of records can produce: a model's compact vocabulary.

``record_token_ids(records, tokenizer)`` serialises every record the way the sample
processor does (``conversation.tokenize_turns``, the ``neo1_0`` template, one
``<IMG_CONTEXT>`` per image tag) and returns the sorted distinct ids, together with the
tokenizer's special ids the packer and the model use (padding / end of text,
``<|im_start|>``, ``<|im_end|>``, the three image tokens). A model whose
``model.vocab_ids`` is that list (``model/compact_vocab.py``) has a row for every id of
those records: their training samples, their evaluation prompts and the answers a
trained model writes. Used by the Table 3 ablation (``configs/ablation.py``), whose
tasks write a few dozen distinct tokens.
"""

from __future__ import annotations

from typing import Iterable

from neo_jax.data import conversation as conv_lib
from neo_jax.data import processor as processor_lib
from neo_jax.data.errors import BadSample
from neo_jax.data.tokenizer import Tokenizer


def special_ids(tok: Tokenizer) -> set[int]:
  """The ids the packer and the model write or compare whatever the text: padding / end
  of text, ``<|im_start|>``, ``<|im_end|>``, ``<IMG_CONTEXT>``, ``<img>``, ``</img>``."""
  return {tok.pad_id, tok.eos_id, tok.im_start_id, tok.im_end_id, tok.img_context_id,
          tok.img_start_id, tok.img_end_id}


def record_token_ids(records: Iterable[dict], tok: Tokenizer) -> tuple[int, ...]:
  """Sorted distinct token ids of ``records`` (release-format: ``conversations``, and
  ``image`` / ``images``) plus ``special_ids(tok)``.

  Args:
    records: release-format records (their media are not read: an image's tokens are
      ``<img><IMG_CONTEXT></img>`` whatever its size).
    tok: the tokenizer the model is trained with.

  Returns:
    Strictly increasing ``int`` ids (a ``model.vocab_ids``).

  Raises:
    ValueError: a record the sample processor would refuse (no assistant turn, image tags
      that do not match its images), naming the record: a vocabulary built without it
      would miss its ids silently; or a video record.
  """
  ids = set(special_ids(tok))
  for k, record in enumerate(records):
    if record.get("video") is not None:   # its frames' text is written by the processor
      raise ValueError(f"record {record.get('id', k)!r} has a video; record_token_ids "
                       "takes text and image records only.")
    n_images = len(processor_lib.image_sources(record))
    turns = conv_lib.add_default_image_tag(
        conv_lib.normalize_turns(record.get("conversations")), n_images)
    try:
      sample_ids, _ = conv_lib.tokenize_turns(turns, tok, [1] * n_images)
    except BadSample as e:
      raise ValueError(f"record {record.get('id', k)!r}: {e}") from e
    ids.update(int(i) for i in sample_ids)
  return tuple(sorted(ids))
