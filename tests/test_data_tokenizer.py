"""Both tokenizer back ends give the same ids (NEO_SPEC §3.1).

The Hugging Face back end is fed a ``tokenizer.json`` built here from the
embedded tiktoken ranks: ``vocab.json`` = byte-level strings of the ranks,
``merges.txt`` = for each multi-byte token (in rank order) the pair that BPE
restricted to lower ranks produces.
"""

import json

import pytest

from neo_jax.data import tokenizer as tok_lib
from neo_jax.model import config as model_config

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


def _bytes_to_unicode() -> dict[int, str]:
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


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  import tokenizers
  from tokenizers import decoders, models, normalizers, pre_tokenizers
  ranks = tok_lib.load_tiktoken_ranks()
  b2u = _bytes_to_unicode()
  enc = lambda b: "".join(b2u[x] for x in b)
  vocab = {enc(t): r for t, r in ranks.items()}
  merges = []
  for t, r in sorted(ranks.items(), key=lambda kv: kv[1]):
    if len(t) > 1:
      parts = _bpe_split(ranks, t, r)
      assert len(parts) == 2, (t, parts)
      merges.append((enc(parts[0]), enc(parts[1])))
  d = tmp_path_factory.mktemp("hf_tok")
  with open(d / "vocab.json", "w") as f:
    json.dump(vocab, f)
  with open(d / "merges.txt", "w") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  t = tokenizers.Tokenizer(models.BPE.from_file(str(d / "vocab.json"), str(d / "merges.txt")))
  t.normalizer = normalizers.NFC()
  t.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(tok_lib.QWEN_PAT_STR), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  t.decoder = decoders.ByteLevel()
  # Qwen3's added tokens only: the back end must add NEO's itself.
  t.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False)
                        for s in tok_lib.QWEN3_SPECIAL_TOKENS])
  t.save(str(d / "tokenizer.json"))
  return str(d)


def test_special_ids():
  ids = tok_lib.special_token_ids()
  assert ids["<|endoftext|>"] == 151643 and ids["<|im_start|>"] == 151644 and ids["<|im_end|>"] == 151645
  assert ids["</think>"] == 151668
  assert ids["<IMG_CONTEXT>"] == model_config.IMG_CONTEXT_TOKEN_ID == 151669
  assert ids["<img>"] == 151670 and ids["</img>"] == 151671
  assert ids["<quad>"] == 151672 and ids["<|interpreter|>"] == 151681
  tk = tok_lib.get_tokenizer("embedded")
  assert tk.vocab_size == 151682 <= model_config.QWEN3_VOCAB_SIZE
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


def test_hf_wrong_special_id_raises(tmp_path, hf_dir):
  import tokenizers
  t = tokenizers.Tokenizer.from_file(hf_dir + "/tokenizer.json")
  t.add_special_tokens([tokenizers.AddedToken("<img>", special=True)])  # gets 151669, not 151670
  t.save(str(tmp_path / "tokenizer.json"))
  with pytest.raises(ValueError, match="<img>"):
    tok_lib.HFTokenizer(str(tmp_path))
