"""Answer scoring: exact match after normalisation, option letters from free text."""

import pytest

from neo_jax.infer import scoring


@pytest.mark.parametrize("pred,ref,want", [
    ("  Seven. ", "seven", True), ("Left\n", "left", True), ("7", "7", True),
    ("the left", "left", False), ("", "3", False), ("3 4", "3  4", True)])
def test_exact_match(pred, ref, want):
  assert scoring.exact_match(pred, ref) is want


@pytest.mark.parametrize("text,want", [
    ("B", "B"), ("(C) a cat", "C"), ("D. blue", "D"), ("A:", "A"),
    ("The answer is B.", "B"), ("I think it is (A)", "A"),
    ("A or B", None), ("B. not A", "B"), ("I cannot tell", None), ("", None), ("E", None)])
def test_extract_choice(text, want):
  assert scoring.extract_choice(text) == want


def test_choice_by_option_text_and_mcq_match():
  options = {"A": "red", "B": "dark blue"}
  assert scoring.extract_choice("Dark blue.", options=options) == "B"
  assert scoring.mcq_match("dark blue", "B", options) == (True, True)
  assert scoring.mcq_match("A", "B. dark blue", options) == (False, True)
  assert scoring.mcq_match("no idea", "B", options) == (False, False)


@pytest.mark.parametrize("pred,ref,want", [
    ("3", "3", (True, True)), ("The answer is 7.", "7", (True, True)), ("(B)", "B", (True, True)),
    ("B", "C", (False, True)), ("2 or 3", "3", (False, False)), ("no idea", "3", (False, False)),
    ("Dark blue.", "dark blue", (True, True)), ("red", "dark blue", (False, True))])
def test_mcq_without_options(pred, ref, want):
  assert scoring.mcq_match_without_options(pred, ref) == want
