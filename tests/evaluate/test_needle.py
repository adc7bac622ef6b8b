"""Needle-in-a-haystack: the needle sits at its depth, and answers are scored on exact tokens."""

import re

import numpy as np
import pytest

from longjax.data.tokenizer import ByteTokenizer
from longjax.evaluate import evaluate_needle, needle_prompt
from longjax.evaluate.needle import NEEDLE, QUESTION, is_correct, needle_position

HAYSTACK = " ".join(f"word{i}" for i in range(400))  # 3,889 characters, words of 5-7 characters


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_the_needle_is_at_its_depth_between_words(depth):
  prompt = needle_prompt(HAYSTACK, 1234, depth)
  before, after = prompt.split(f"\n{NEEDLE.format(number=1234)}\n")
  assert after.endswith(f"\n{QUESTION}")
  assert before + after[:-len(QUESTION) - 1] == HAYSTACK  # nothing lost, nothing added
  target = depth * len(HAYSTACK)
  assert target - 8 <= len(before) <= target  # backed off at most one word
  assert len(before) in (0, len(HAYSTACK)) or HAYSTACK[len(before)] == " "  # words whole


def test_needle_position_rejects_a_bad_depth():
  with pytest.raises(ValueError, match="depth"):
    needle_position(HAYSTACK, -0.1)


def test_scorer_needs_the_answer_tokens_first():
  assert is_correct([5, 6, 7, 9], [5, 6, 7])
  assert not is_correct([5, 6], [5, 6, 7])
  assert not is_correct([9, 5, 6, 7], [5, 6, 7])
  assert not is_correct([5, 6, 7], [])


def test_grid_scores_a_reader_fully_and_a_guesser_by_chance():
  tokenizer = ByteTokenizer()
  encode_prompt = lambda text: tokenizer.encode(text, bos=True)  # noqa: E731
  encode_answer = lambda text: tokenizer.encode(text)  # noqa: E731

  def reader(prompts, max_new_tokens):
    numbers = [re.search(r"magic number is (\d+)\.", tokenizer.decode(p)).group(1) for p in prompts]
    return np.asarray([(encode_answer(f" {n}") + [0] * max_new_tokens)[:max_new_tokens] for n in numbers])

  documents = ["def f():\n  return 1\n" * 20, "class A:\n  pass\n" * 30]
  grid = evaluate_needle(reader, encode_prompt, encode_answer, documents, [256, 512], [0.0, 0.5, 1.0], trials=3)
  assert grid.accuracy == [[1.0] * 3] * 2
  assert all(n - 8 <= tokens <= n for n, tokens in zip([256, 512], grid.prompt_tokens))

  seen = []

  def guesser(prompts, max_new_tokens):
    seen.append([int(re.search(r"magic number is (\d+)\.", tokenizer.decode(p)).group(1)) for p in prompts])
    return np.asarray([(encode_answer(" 3") + [0] * max_new_tokens)[:max_new_tokens] for _ in prompts])

  grid = evaluate_needle(guesser, encode_prompt, encode_answer, documents, [256], [0.0, 1.0], trials=40, digits=1)
  assert [a for row in grid.accuracy for a in row] == [np.mean([k == 3 for k in keys]) for keys in seen]
