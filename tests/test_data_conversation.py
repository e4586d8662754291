"""Hand-derived ids / labels / t,h,w for a multi-turn multi-image sample and a video sample."""

import numpy as np
import pytest
from PIL import Image

from testlib import data as ref
from neo_jax.data import conversation
from neo_jax.data import processor as processor_lib
from neo_jax.data.errors import BadSample
from neo_jax.data.tokenizer import get_tokenizer

IM_START, IM_END, NL = 151644, 151645, 198
IMG, CTX, END = 151670, 151669, 151671
USER, ASSISTANT, SYSTEM = 872, 77091, 8948
X = -100


def _img(path, h, w, seed):
  arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
  Image.fromarray(arr).save(path)
  return arr


def test_multi_turn_multi_image(tmp_path):
  a = _img(tmp_path / "a.png", 32, 64, 0)     # 1x2 token grid
  b = _img(tmp_path / "b.png", 128, 128, 1)   # resized to 64x64 -> 2x2
  rec = {"images": ["a.png", "b.png"], "data_path": str(tmp_path), "_id": "hand:0", "conversations": [
      {"from": "system", "value": "Be brief."},
      {"from": "human", "value": "<image>\nWhat is this?"},
      {"from": "gpt", "value": "7"},
      {"from": "human", "value": "And this one?<image>"},
      {"from": "gpt", "value": "no"}]}
  # n = 2 images: per-image budget max(4096 * 2 // 2, 1024) = 4096 px.
  opts = processor_lib.ProcessOptions(min_pixels=1024, max_pixels=4096)
  s = processor_lib.SampleProcessor(opts).process(rec)
  expect_ids = ([IM_START, SYSTEM, NL, 3430, 9814, 13, IM_END, NL]              # "system\nBe brief."
                + [IM_START, USER, NL, IMG, CTX, CTX, END, NL, 3838, 374, 419, 30, IM_END, NL]
                + [IM_START, ASSISTANT, NL, 22, IM_END, NL]                     # "7"
                + [IM_START, USER, NL, 3036, 419, 825, 30, IMG, CTX, CTX, CTX, CTX, END, IM_END, NL]
                + [IM_START, ASSISTANT, NL, 2152, IM_END, NL])                  # "no"
  expect_labels = ([X] * 8 + [X] * 14 + [X, X, X, 22, IM_END, NL] + [X] * 15
                   + [X, X, X, 2152, IM_END, NL])
  assert s["input_ids"].tolist() == expect_ids
  assert s["labels"].tolist() == expect_labels
  assert s["num_supervised"] == 6
  t, h, w = ref.ref_thw(s["input_ids"], s["token_hw"])
  expect_t = list(range(0, 12)) + [12, 12] + list(range(13, 35)) + [35] * 4 + list(range(36, 45))
  assert t.tolist() == expect_t
  hw = [(0, 0)] * len(expect_ids)
  hw[12:14] = [(0, 0), (0, 1)]
  hw[36:40] = [(0, 0), (0, 1), (1, 0), (1, 1)]
  assert list(zip(h.tolist(), w.tolist())) == hw
  assert s["token_hw"].tolist() == [list(x) for x in hw]
  # Visual tokens: image a unresized, image b bicubic 128 -> 64.
  b64 = np.asarray(Image.fromarray(b).resize((64, 64), Image.Resampling.BICUBIC))
  np.testing.assert_array_equal(s["pixel_values"], np.concatenate([ref.ref_patches(a), ref.ref_patches(b64)]))


def test_video_frames(tmp_path):
  f0 = _img(tmp_path / "f0.png", 32, 64, 2)
  f1 = _img(tmp_path / "f1.png", 32, 64, 3)
  rec = {"video": {"frames": ["f0.png", "f1.png"], "fps": 1.0}, "data_path": str(tmp_path),
         "conversations": [{"from": "human", "value": "<video>\nWhich way?"},
                           {"from": "gpt", "value": "left"}]}
  # Per-frame budget max(4096 // 2, 1024) = 2048 = 32 x 64: one 1x2 grid per frame.
  opts = processor_lib.ProcessOptions(video_fps=1.0, video_min_pixels=1024, video_max_pixels=4096)
  s = processor_lib.SampleProcessor(opts).process(rec)
  prefix = [785, 882, 2088, 315, 419, 2766, 374, 508, 15, 15, 25, 15, 15, 12, 15, 15, 25, 15, 17, 1125, 323,
            279, 2701, 374, 264, 4013, 315, 220, 17, 14087, 48876, 518, 220, 16, 13, 15, 43628, 624,
            58, 15, 15, 25, 15, 15, 13, 15, 15, 5669]  # "The time range ... 1.0 FPS.\n[00:00.00]:"
  frame1 = [198, 58, 15, 15, 25, 15, 16, 13, 15, 15, 5669]  # "\n[00:01.00]:"
  expect_ids = ([IM_START, USER, NL] + prefix + [IMG, CTX, CTX, END] + frame1 + [IMG, CTX, CTX, END]
                + [198, 23085, 1616, 30, IM_END, NL] + [IM_START, ASSISTANT, NL, 2359, IM_END, NL])
  assert s["input_ids"].tolist() == expect_ids
  n_prompt = len(expect_ids) - 3
  assert s["labels"].tolist() == [X] * n_prompt + [2359, IM_END, NL]
  t, h, w = ref.ref_thw(s["input_ids"], s["token_hw"])
  p = 3 + len(prefix)  # index of the first <img>
  expect_t = (list(range(p + 1)) + [p + 1, p + 1] + list(range(p + 2, p + 2 + 1 + len(frame1) + 1))
              + [p + 2 + len(frame1) + 2] * 2 + list(range(p + len(frame1) + 5, p + len(frame1) + 5 + 13)))
  assert t.tolist() == expect_t
  assert t[-1] == len(expect_ids) - 1 - 2  # two frames, each one t for its two visual tokens
  ctx = np.flatnonzero(s["input_ids"] == CTX)
  assert list(zip(h[ctx].tolist(), w[ctx].tolist())) == [(0, 0), (0, 1), (0, 0), (0, 1)]
  np.testing.assert_array_equal(s["pixel_values"], np.concatenate([ref.ref_patches(f0), ref.ref_patches(f1)]))


def test_video_tag_defaults_to_first_user_turn_and_prompt_only(tmp_path):
  _img(tmp_path / "f0.png", 32, 32, 4)
  rec = {"video": ["f0.png"], "data_path": str(tmp_path),
         "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
  s = processor_lib.SampleProcessor(processor_lib.ProcessOptions(video_min_pixels=1024)).process(
      rec, prompt_only=True)
  tok = get_tokenizer()
  text = tok.decode(s["input_ids"])
  assert text.startswith("<|im_start|>user\nThe time range of this video is [00:00-00:01]")
  assert text.endswith("[00:00.00]:<img><IMG_CONTEXT></img>\nQ<|im_end|>\n<|im_start|>assistant\n")
  assert s["answer"] == "A" and (s["labels"] == X).all()


def test_single_image_gets_default_tag():
  turns = conversation.add_default_image_tag([("user", "hi"), ("assistant", "x")], 1)
  assert turns == [("user", "<image>\nhi"), ("assistant", "x")]
  assert conversation.add_default_image_tag([("user", "hi")], 2) == [("user", "hi")]
  # Only the first turn is looked at (the release's loop breaks after it).
  first_system = [("system", "s"), ("user", "hi"), ("assistant", "x")]
  assert conversation.add_default_image_tag(first_system, 1) == first_system


@pytest.mark.parametrize("conv,reason", [
    ([], "empty_conversation"),
    ([{"from": "human", "value": "hi"}], "no_supervised_token"),
    ([{"from": "robot", "value": "hi"}], "empty_conversation"),
    ([{"from": "human", "value": "hi"}, {"from": "robot", "value": "x"}], "no_supervised_token"),
    ([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x", "is_input": True}],
     "no_supervised_token"),
    ([{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}], "bad_record"),
])
def test_bad_conversations(conv, reason):
  with pytest.raises(BadSample) as e:
    processor_lib.SampleProcessor().process({"conversations": conv})
  assert e.value.reason == reason
