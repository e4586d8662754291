"""Both tokenizer back ends give the same ids (docs/design.md §3.1).

The Hugging Face back end and ``transformers.AutoTokenizer`` (fast and slow)
are fed the files ``neo_jax.data.hf_tokenizer.write_hf_tokenizer`` builds from
the embedded tiktoken ranks (what ``export`` writes by default).
"""

import json

import pytest

from neo_jax.data import hf_tokenizer, tokenizer as tok_lib
from neo_jax.core import tokens as core_tokens

TEXTS = [
    "Hello, world! What digit is shown in the image?",
    "  leading spaces\n\n\ttabs and\r\nCRLF   trailing   ",
    "I'm sure they'll say DON'T, we've seen it; it's fine.",
    "Numbers: 1234567890 3.14159 -42 1e-6 0x1F",
    "你好，世界！这是一个测试。日本語のテキスト。한국어 텍스트",
    "Emoji 🤖🎉👍🏽 and symbols ∑∫√ ≤≥ → ©®",
    "Café naïve résumé (NFD: Cafe\u0301 nai\u0308ve)",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n",
    "<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nWhat?<|im_end|>\n<|im_start|>assistant\n7<|im_end|>\n",
    "<image> is a literal placeholder, <ref>x</ref><box>[1,2]</box> <think>hm</think>",
    "مرحبا بالعالم Привет мир Γειά σου",
    "\u200b zero-width and \ufeff BOM",
    "",
]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("hf_tok")
  assert hf_tokenizer.write_hf_tokenizer(str(d)) == list(hf_tokenizer.TOKENIZER_FILE_NAMES)
  return str(d)


def test_special_ids():
  ids = tok_lib.special_token_ids()
  assert ids["<|endoftext|>"] == 151643 and ids["<|im_start|>"] == 151644 and ids["<|im_end|>"] == 151645
  assert ids["</think>"] == 151668
  assert ids["<IMG_CONTEXT>"] == core_tokens.IMG_CONTEXT_TOKEN_ID == 151669
  assert ids["<img>"] == 151670 and ids["</img>"] == 151671
  assert ids["<quad>"] == 151672 and ids["<|interpreter|>"] == 151681
  tk = tok_lib.get_tokenizer("embedded")
  assert tk.vocab_size == 151682 <= core_tokens.QWEN3_VOCAB_SIZE
  assert (tk.img_context_id, tk.img_start_id, tk.img_end_id) == (151669, 151670, 151671)


def test_back_ends_agree(hf_dir):
  emb = tok_lib.get_tokenizer("embedded")
  hf = tok_lib.get_tokenizer(hf_dir)
  assert hf.special_ids == emb.special_ids and hf.vocab_size == emb.vocab_size
  for text in TEXTS:
    ids = emb.encode(text)
    assert hf.encode(text) == ids, text
    assert emb.decode(ids) == hf.decode(ids)
  assert emb.encode("What digit") == [3838, 15723]
  assert emb.encode("<IMG_CONTEXT><img></img>") == [151669, 151670, 151671]
  assert emb.decode(emb.encode(TEXTS[4])) == TEXTS[4]


@pytest.fixture
def qwen3_only_dir(tmp_path, hf_dir):
  """The written tokenizer.json with Qwen3's added tokens only (NEO's removed)."""
  with open(hf_dir + "/tokenizer.json") as f:
    tj = json.load(f)
  tj["added_tokens"] = [a for a in tj["added_tokens"] if a["content"] in tok_lib.QWEN3_SPECIAL_TOKENS]
  assert len(tj["added_tokens"]) == 26
  d = tmp_path / "qwen3_only"
  d.mkdir()
  with open(d / "tokenizer.json", "w") as f:
    json.dump(tj, f)
  return str(d)


def test_hf_wrong_special_id_raises(tmp_path, qwen3_only_dir):
  import tokenizers
  t = tokenizers.Tokenizer.from_file(qwen3_only_dir + "/tokenizer.json")
  t.add_special_tokens([tokenizers.AddedToken("<img>", special=True)])  # gets 151669, not 151670
  t.save(str(tmp_path / "tokenizer.json"))
  with pytest.raises(ValueError, match="<img>"):
    tok_lib.HFTokenizer(str(tmp_path))


def test_hf_back_end_adds_missing_neo_tokens(qwen3_only_dir):
  hf = tok_lib.HFTokenizer(qwen3_only_dir)
  assert hf.special_ids == tok_lib.special_token_ids()
  assert hf.encode(TEXTS[8]) == tok_lib.get_tokenizer("embedded").encode(TEXTS[8])


@pytest.mark.parametrize("use_fast", [True, False])
def test_transformers_auto_tokenizer(hf_dir, use_fast):
  transformers = pytest.importorskip("transformers")
  # The release's VLMEvalKit loads it with use_fast=False, trust_remote_code=True.
  at = transformers.AutoTokenizer.from_pretrained(hf_dir, use_fast=use_fast, trust_remote_code=True)
  assert type(at).__name__ == ("Qwen2TokenizerFast" if use_fast else "Qwen2Tokenizer")
  emb = tok_lib.get_tokenizer("embedded")
  for text in TEXTS:
    ids = emb.encode(text)
    assert at.encode(text) == ids, text
    assert at(text)["input_ids"] == ids, text  # add_special_tokens=True adds nothing (no bos)
    assert at.decode(ids) == emb.decode(ids), text
  ids = at.encode("<img><IMG_CONTEXT><image> hello world.</img>")
  assert ids[:2] == [151670, 151669] and ids[-4:] == [23811, 1879, 13, 151671]
  special = tok_lib.special_token_ids()
  assert len(at) == emb.vocab_size == 151682
  for text, i in special.items():
    assert at.convert_tokens_to_ids(text) == i, text
    assert at.convert_ids_to_tokens(i) == text, text
    assert at.encode(text) == [i], text
  assert (at.eos_token, at.eos_token_id, at.pad_token, at.pad_token_id, at.bos_token) == (
      "<|im_end|>", 151645, "<|endoftext|>", 151643, None)
  assert at.convert_tokens_to_ids("<|im_end|>\n".strip()) == 151645  # the release's eos lookup
  # Qwen3's special flags: <think> survives skip_special_tokens, <img> does not.
  assert at.decode(emb.encode("<think>a</think><img>b</img>"), skip_special_tokens=True) == "<think>a</think>b"
  # neo1_0 (docs/design.md §3.3): system block only when given.
  msgs = [{"role": "user", "content": "What?"}, {"role": "assistant", "content": "7"}]
  assert at.apply_chat_template(msgs, tokenize=False) == (
      "<|im_start|>user\nWhat?<|im_end|>\n<|im_start|>assistant\n7<|im_end|>\n")
  assert at.apply_chat_template([{"role": "system", "content": "S"}] + msgs[:1], tokenize=False,
                                add_generation_prompt=True) == (
      "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nWhat?<|im_end|>\n<|im_start|>assistant\n")


def test_written_files(hf_dir):
  with open(hf_dir + "/tokenizer_config.json") as f:
    tc = json.load(f)
  assert tc["tokenizer_class"] == "Qwen2Tokenizer" and tc["model_max_length"] == 40960
  dec = {int(k): v["content"] for k, v in tc["added_tokens_decoder"].items()}
  assert dec == {i: t for t, i in tok_lib.special_token_ids().items()}
  with open(hf_dir + "/vocab.json") as f:
    assert len(json.load(f)) == tok_lib.NUM_BPE_RANKS
  with open(hf_dir + "/merges.txt") as f:
    assert sum(1 for _ in f) == 1 + tok_lib.NUM_BPE_RANKS - 256
