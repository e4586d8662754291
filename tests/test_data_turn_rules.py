"""The release's conversation rules (VLMTrainKit/neo/data), each stated twice:

* as plain Python (always runs): ``is_input`` assistant turns are context, an unknown
  role drops that turn only (counted as the sample's ``skipped_turns``), the default
  ``<image>`` goes to a one-image record's first turn when it is a tag-less user turn;
* against the release's own ``tokenize_mm_chat_conversations`` (utils.py) and its
  default-tag statement (``LazySupervisedDataset._get_item``, data_processor.py:143-149),
  taken out of the release files with ``ast`` (``testlib/release_trainkit.py``) and run
  on the same turns, with our tokenizer behind the release's calls. Needs
  ``NEO_RELEASE_DIR`` and torch (the release builds ``torch.LongTensor``s).
"""

import contextlib
import copy
import io
import itertools
import typing

import numpy as np
import pytest

from neo_jax.core.tokens import IGNORE_INDEX
from neo_jax.data import conversation as conv_lib
from neo_jax.data import processor as processor_lib
from neo_jax.data.errors import BadSample
from neo_jax.data.tokenizer import get_tokenizer
from testlib import release_trainkit

TOK = get_tokenizer()
X = IGNORE_INDEX


def ours(conv: list[dict], image_tokens: list[int]) -> tuple[list[int], list[int]]:
  turns = conv_lib.add_default_image_tag(conv_lib.normalize_turns(conv), len(image_tokens))
  ids, labels = conv_lib.tokenize_turns(turns, TOK, image_tokens)
  return ids.tolist(), labels.tolist()


def context(role: str, text: str) -> list[int]:
  """A turn the release tokenises in one call without labels."""
  return TOK.encode(f"<|im_start|>{role}\n{text}<|im_end|>\n")


def answer(text: str) -> tuple[list[int], list[int]]:
  head, body = TOK.encode("<|im_start|>assistant\n"), TOK.encode(f"{text}<|im_end|>\n")
  return head + body, [X] * len(head) + body


# ---- plain statements of the rules ------------------------------------------------------

def test_is_input_assistant_turn_is_context():
  conv = [{"from": "human", "value": "Q"},
          {"from": "gpt", "value": "shown, not learned", "is_input": True},
          {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]
  a_ids, a_lab = answer("A2")
  want_ids = (context("user", "Q") + context("assistant", "shown, not learned")
              + context("user", "Q2") + a_ids)
  want_lab = [X] * (len(want_ids) - len(a_ids)) + a_lab
  assert ours(conv, []) == (want_ids, want_lab)
  # is_input on a non-assistant turn changes nothing; is_input false is a normal answer.
  conv[0]["is_input"], conv[1]["is_input"] = True, False
  b_ids, b_lab = answer("shown, not learned")
  assert ours(conv, [])[1] == [X] * len(context("user", "Q")) + b_lab + [X] * len(
      context("user", "Q2")) + a_lab


def test_unknown_role_drops_the_turn_and_is_counted():
  conv = [{"from": "human", "value": "Q"}, {"from": "observation", "value": "tool output"},
          {"from": "gpt", "value": "A"}, {"role": None, "value": "?"}]
  kept = [conv[0], conv[2]]
  assert ours(conv, []) == ours(kept, [])
  s = processor_lib.SampleProcessor().process({"conversations": conv})
  assert s["skipped_turns"] == 2 and s["input_ids"].tolist() == ours(kept, [])[0]
  assert "skipped_turns" not in processor_lib.SampleProcessor().process({"conversations": kept})
  # An image tag in a dropped turn: the release loses that image; here a counted skip.
  with pytest.raises(BadSample, match="unknown role") as e:
    ours([{"from": "system", "value": "S"}, {"from": "tool", "value": "<image>"},
          {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], [4])
  assert e.value.reason == "image_tag_mismatch"


def default_tag_rule(conv: list[dict], num_images: int) -> list[dict]:
  """data_processor.py:143-149 restated: the first turn only, human, no tag, one image."""
  out = copy.deepcopy(conv)
  if num_images == 1 and out and out[0]["from"] == "human" and "<image>" not in out[0]["value"]:
    out[0]["value"] = "<image>\n" + out[0]["value"]
  return out


ROLE_CHOICES = ("human", "gpt", "system", "tool")
TEXTS = ("hi", "<image>\nhi", "a <image> b")


def _conversations():
  for n_turns in (1, 2, 3):
    for roles in itertools.product(ROLE_CHOICES, repeat=n_turns):
      for texts in itertools.product(TEXTS, repeat=n_turns):
        yield [{"from": r, "value": t} for r, t in zip(roles, texts)]


def test_default_image_tag_rule_over_all_small_conversations():
  checked = 0
  for conv in _conversations():
    if all(t["from"] == "tool" for t in conv):
      continue  # no turn with a known role: empty_conversation (test_data_conversation.py)
    for n in (0, 1, 2):
      want = conv_lib.normalize_turns(default_tag_rule(conv, n))
      assert conv_lib.add_default_image_tag(conv_lib.normalize_turns(conv), n) == want, (conv, n)
      checked += 1
  assert checked == 3 * (3 * 3 + 15 * 9 + 63 * 27)


# ---- the same rules, run by the release's own code ---------------------------------------

def _release_functions():
  root = release_trainkit.trainkit_dir()
  torch = pytest.importorskip("torch")
  consts: dict = {}
  exec((root / "neo/data/constants.py").read_text(), consts)  # pylint: disable=exec-used
  ns = {"copy": copy, "torch": torch, "Dict": typing.Dict, "List": typing.List,
        "PreTrainedTokenizer": object, **consts}
  tokenize = release_trainkit.release_function(root / "neo/data/utils.py",
                                               "tokenize_mm_chat_conversations", ns)
  hack = release_trainkit.release_statement(root / "neo/data/data_processor.py",
                                            "LazySupervisedDataset", "_get_item",
                                            "if num_image == 1:")
  return tokenize, hack


class _ReleaseTokenizer:
  """Our tokenizer behind the two calls the release makes (utils.py:259-261, 288)."""
  pad_token_id = 151643

  def __call__(self, text, return_attention_mask=False, add_special_tokens=False):
    assert not return_attention_mask and not add_special_tokens
    return {"input_ids": TOK.encode(text)}


def release(conv: list[dict], image_tokens: list[int]) -> tuple[list[int], list[int]]:
  tokenize, hack = _release_functions()
  source = {"conversations": copy.deepcopy(conv)}
  exec(hack, {"source": source, "num_image": len(image_tokens)})  # pylint: disable=exec-used
  with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per skipped turn
    res = tokenize(conversations=source["conversations"], tokenizer=_ReleaseTokenizer(),
                   num_image_token_list=list(image_tokens), num_image=len(image_tokens))
  return res["input_ids"][0].tolist(), res["labels"][0].tolist()


needs_release = pytest.mark.skipif(release_trainkit.trainkit_dir() is None,
                                   reason="set NEO_RELEASE_DIR to the extracted release")

SAME = [
    ("is_input", [{"from": "human", "value": "<image>\nQ"},
                  {"from": "gpt", "value": "context", "is_input": True},
                  {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}], [4]),
    ("unknown_role", [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                      {"from": "observation", "value": "tool"}, {"from": "gpt", "value": "A"}], []),
    ("default_tag", [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], [3]),
    ("tag_in_place", [{"from": "human", "value": "Look: <image> ok?"},
                      {"from": "gpt", "value": "A"}], [2]),
    ("two_images", [{"from": "human", "value": "<image><image>Q"}, {"from": "gpt", "value": "A"}],
     [1, 2]),
]
# Records the release turns into samples whose image count and <IMG_CONTEXT> blocks differ
# (its model then fails); here they are a counted image_tag_mismatch skip.
BROKEN = [
    ("system_first", [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                      {"from": "gpt", "value": "A"}], [3]),
    ("unknown_first", [{"from": "tool", "value": "T"}, {"from": "human", "value": "Q"},
                       {"from": "gpt", "value": "A"}], [3]),
    ("later_tag", [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"},
                   {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "B"}], [3]),
    ("two_untagged", [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], [1, 2]),
]


@pytest.mark.torch
@needs_release
@pytest.mark.parametrize("name,conv,image_tokens", SAME, ids=[c[0] for c in SAME])
def test_release_tokenizes_the_same(name, conv, image_tokens):
  assert ours(conv, image_tokens) == release(conv, image_tokens), name


@pytest.mark.torch
@needs_release
@pytest.mark.parametrize("name,conv,image_tokens", BROKEN, ids=[c[0] for c in BROKEN])
def test_release_loses_images_where_we_skip(name, conv, image_tokens):
  ids, _ = release(conv, image_tokens)
  blocks = int(np.sum(np.asarray(ids) == TOK.img_start_id))
  assert blocks != len(image_tokens) or "<image>" in TOK.decode(ids), name
  with pytest.raises(BadSample) as e:
    ours(conv, image_tokens)
  assert e.value.reason == "image_tag_mismatch"
