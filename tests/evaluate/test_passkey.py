"""The passkey prompt is landmark-attention's template, and the grid scores an injected generator exactly."""

import re

import numpy as np
import pytest

from longjax.evaluate import evaluate_passkey, passkey_prompt
from longjax.evaluate.passkey import GARBAGE, INTRO, QUESTION, first_integer

INTRO_TEXT = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will "
              "quiz you about the important information there.")
GARBAGE_TEXT = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.5, 0.75, 1.0])
def test_prompt_is_the_template_with_the_key_at_depth(depth):
  n_garbage = 1000
  lines = passkey_prompt(31337, n_garbage, depth).split("\n")
  assert (INTRO, GARBAGE, QUESTION) == (INTRO_TEXT, GARBAGE_TEXT, "What is the pass key? The pass key is")
  assert len(lines) == 5
  assert lines[0] == INTRO_TEXT
  assert lines[2] == "The pass key is 31337. Remember it. 31337 is the pass key."
  assert lines[4] == "What is the pass key? The pass key is"
  repeated = " ".join([GARBAGE_TEXT] * 20)
  prefix = round(depth * n_garbage)
  assert lines[1] == repeated[:prefix] and lines[3] == repeated[:n_garbage - prefix]
  assert len(lines[1]) + len(lines[3]) == n_garbage


def test_prompt_rejects_a_depth_outside_the_unit_interval():
  with pytest.raises(ValueError, match="depth"):
    passkey_prompt(1, 10, 1.5)


def test_first_integer():
  assert first_integer(" 4213. Remember") == 4213
  assert first_integer("no digits") is None
  assert first_integer(" 12 34") == 12


def _key_of(prompt: str) -> int:
  return int(re.search(r"The pass key is (\d+)\. Remember it", prompt).group(1))


def test_a_model_that_copies_the_key_scores_everywhere_and_prompts_fit_the_lengths():
  lengths = [300, 600, 1200]
  grid = evaluate_passkey(lambda prompts, n: [f" {_key_of(p)}. Remember" for p in prompts], len, lengths,
                          [0.0, 0.5, 1.0], keys_per_cell=4, seed=3)
  assert grid.accuracy == [[1.0] * 3] * 3 and grid.mean_accuracy == 1.0
  # with len() as the token count, the filler is the most characters that keep the prompt within the length
  assert all(n - 1 <= tokens <= n for n, tokens in zip(lengths, grid.prompt_tokens))


def test_a_model_that_always_answers_one_number_scores_how_often_that_is_the_key():
  seen = []

  def answer_seven(prompts, max_new_tokens):
    assert max_new_tokens >= 2
    seen.append([_key_of(p) for p in prompts])
    return [" 7." for _ in prompts]

  grid = evaluate_passkey(answer_seven, len, [200, 400], [0.0, 1.0], keys_per_cell=30, digits=1, seed=0)
  expected = [np.mean([k == 7 for k in keys]) for keys in seen]
  assert [a for row in grid.accuracy for a in row] == expected
  assert all(1 <= k <= 9 for keys in seen for k in keys)
  assert 0.0 < grid.mean_accuracy < 0.5


def test_keys_are_seeded_and_uniform_in_1_to_50000_by_default():
  seen = []
  record = lambda prompts, n: seen.extend(_key_of(p) for p in prompts) or [""] * len(prompts)  # noqa: E731
  evaluate_passkey(record, len, [300], [0.5], keys_per_cell=200, seed=1)
  first = list(seen)
  seen.clear()
  evaluate_passkey(record, len, [300], [0.5], keys_per_cell=200, seed=1)
  assert seen == first and min(first) >= 1 and max(first) <= 50000 and max(first) > 10000
