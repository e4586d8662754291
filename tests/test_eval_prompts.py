"""The release's benchmark prompts (``neo_jax/eval/prompts.py``).

Always: hand-written expected strings, read off the release's ``build_prompt`` /
``build_multi_choice_prompt`` / ``reorganize_prompt`` (VLMEvalKit/vlmeval/vlm/neo/ and
VLMEvalKit_ov/vlmeval/vlm/neo/). With ``NEO_RELEASE_DIR``: the release's own functions
(``testlib/release_eval.py``) on the same rows give the same user turn."""

from __future__ import annotations

import pytest

from neo_jax.eval import prompts
from testlib import release_eval

MCQ_ROW = {"index": "3", "question": "What is shown?", "hint": "Look closely.",
           "A": "a cat", "B": "a dog", "C": "a bird", "answer": "B"}
MCQ_GAP = {"index": "4", "question": "<image>Which one?", "A": "red", "B": None, "C": "blue",
           "answer": "C"}
CN_ROW = {"index": "5", "question": "图中是什么？", "A": "猫", "B": "狗", "answer": "A"}
NO_OPT = {"index": "6", "question": "Describe the scene."}
YN_ROW = {"index": "7", "question": "Is there a cat in the image?", "answer": "Yes"}
VQA_ROW = {"index": "8", "question": "What is written on the sign?", "answer": "stop"}
MMMU_ROW = {"index": "9", "id": "validation_Art_Theory_12", "question_type": "multiple-choice",
            "question": "<image 1> Which style?", "A": "Baroque", "B": "Gothic", "answer": "A"}
SUFFIX = "Answer with the option's letter from the given choices directly."


def test_multiple_choice_prompt_by_hand():
  assert prompts.question_prompt(MCQ_ROW, "MMBench_DEV_EN", "MCQ") == (
      "Look closely.\nWhat is shown?\nA. a cat\nB. a dog\nC. a bird\n" + SUFFIX)
  # A missing option is left out (the letters keep their names); NEO keeps the tag,
  # NEO-ov removes it and strips.
  assert prompts.question_prompt(MCQ_GAP, "MMStar", "MCQ") == (
      "<image>Which one?\nA. red\nC. blue\n" + SUFFIX)
  assert prompts.question_prompt(MCQ_GAP, "MMStar", "MCQ", "neo_ov") == (
      "Which one?\nA. red\nC. blue\n" + SUFFIX)
  assert prompts.question_prompt(CN_ROW, "MMBench_DEV_CN", "MCQ") == (
      "图中是什么？\nA. 猫\nB. 狗\n请直接回答选项字母。")
  assert prompts.question_prompt(NO_OPT, "Custom", "MCQ") == (
      "Describe the scene.\nAnswer the question directly.")


def test_yes_no_and_vqa_prompts_by_hand():
  q = YN_ROW["question"]
  assert prompts.question_prompt(YN_ROW, "MME", "Y/N") == (
      q + " Answer the question using a single word or phrase.")
  assert prompts.question_prompt(YN_ROW, "HallusionBench", "Y/N") == (
      q + " Please answer yes or no. Answer the question using a single word or phrase.")
  assert prompts.question_prompt(YN_ROW, "POPE", "Y/N") == q
  v = VQA_ROW["question"]
  short = v + "\nAnswer the question using a single word or phrase."
  assert prompts.question_prompt(VQA_ROW, "TextVQA_VAL", "VQA") == short
  assert prompts.question_prompt(VQA_ROW, "SomeOpenended", "VQA") == short
  assert prompts.question_prompt(VQA_ROW, "MathVista_MINI", "VQA") == v
  assert prompts.question_prompt(VQA_ROW, "LLaVABench", "VQA") == (
      v + "\nAnswer this question in detail.")
  math = {"question": "Look, please directly answer the question and explain."}
  assert prompts.question_prompt(math, "MathVerse_MINI", "VQA") == "Look, please explain."


def test_mmmu_prompt_of_neo_ov_by_hand():
  got = prompts.question_prompt(MMMU_ROW, "MMMU_DEV_VAL", "MCQ", "neo_ov")
  assert got.startswith("Answer the preceding multiple choice question. The last line of your "
                        "response should follow this format: 'Answer: \\boxed LETTER'")
  assert got.endswith("considering all relevant information before answering.\n\n"
                      "<image 1> Which style?\nA. Baroque\nB. Gothic")
  with pytest.raises(prompts.PromptError, match="question_type"):
    prompts.question_prompt({k: v for k, v in MMMU_ROW.items() if k != "question_type"},
                            "MMMU_DEV_VAL", "MCQ", "neo_ov")


def test_image_placement_by_hand():
  t = "Q?"
  assert prompts.place_images(t, 0, "MMStar") == "Q?"
  assert prompts.place_images(t, 1, "MMStar") == "<image>\nQ?"
  assert prompts.place_images(t, 1, "MMStar", "neo_ov") == "<image>\nQ?"
  assert prompts.place_images(t, 2, "BLINK") == "Image-1: <image>\nImage-2: <image>\nQ?"
  assert prompts.place_images(t, 2, "BLINK", "neo_ov") == "Q?<image>\n<image>\n"
  muir = "Which of <image> <image> matches <image>?"
  assert prompts.place_images(muir, 3, "MUIRBench") == (
      "Image-1: <image>\nImage-2: <image>\nImage-3: <image>\n"
      "Which of <Image-1> <Image-2> matches <Image-3>?")
  assert prompts.place_images("Q", 2, "MUIRBench", "neo_ov") == (
      "<Image-1>: <image>\n<Image-2>: <image>\nQ<Image-1><Image-2>")


ROWS = [("MMBench_DEV_EN", "MCQ", MCQ_ROW, 1), ("MMStar", "MCQ", MCQ_GAP, 1),
        ("MMBench_DEV_CN", "MCQ", CN_ROW, 1), ("CustomBench", "MCQ", NO_OPT, 1),
        ("BLINK", "MCQ", MCQ_ROW, 3), ("MUIRBench", "MCQ", dict(MCQ_ROW, question="<image> or?"), 2),
        ("MME", "Y/N", YN_ROW, 1), ("HallusionBench", "Y/N", YN_ROW, 1), ("POPE", "Y/N", YN_ROW, 1),
        ("TextVQA_VAL", "VQA", VQA_ROW, 1), ("MathVista_MINI", "VQA", VQA_ROW, 1),
        ("LLaVABench", "VQA", VQA_ROW, 1), ("MyOpenended", "VQA", VQA_ROW, 2),
        ("OCRBench", "VQA", VQA_ROW, 1)]


@pytest.mark.parametrize("style", prompts.STYLES)
@pytest.mark.parametrize("dataset,dtype,row,n", ROWS + [("MMMU_DEV_VAL", "MCQ", MMMU_ROW, 2)])
def test_user_turn_equals_the_release(style, dataset, dtype, row, n):
  ov = style == "neo_ov"
  build = release_eval.build_prompt(ov, dtype)
  utils = release_eval.neo_utils(ov)
  message = build(row, dataset, [f"/img/{dataset}_{row['index']}_{i}.jpg" for i in range(n)])
  want = utils["reorganize_prompt"](message, n, dataset=dataset)
  if "<image>" not in want:                 # NEOChatModel.chat
    want = "<image>\n" + want
  got = prompts.place_images(prompts.question_prompt(row, dataset, dtype, style), n, dataset,
                             style)
  assert got == want
