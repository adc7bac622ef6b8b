"""Prompt lengths exactly where a tokenizer allows them: passkey prompts fill their length to the token (byte
tokens: always; coarser tokens: the most filler that fits, one character more does not), and RULER's short-context
rule at its boundary (context plus the task's generation budget below 4096 tokens)."""

import collections
import math
import re

import numpy as np
import pytest

from longjax.data import ByteTokenizer
from longjax.evaluate import evaluate_passkey, passkey_prompt, ruler
from longjax.evaluate.passkey import MAX_KEY, fit_characters

BYTES = ByteTokenizer()


def byte_count(text: str) -> int:
  return len(BYTES.encode(text))


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_byte_prompts_have_exactly_the_length(depth):
  """Every length from the bare prompt's own size up: one byte more of filler is one token more."""
  bare = byte_count(passkey_prompt(MAX_KEY, 0, depth))
  for length in list(range(bare, bare + 40)) + [300, 1000, 4099]:
    n = fit_characters(lambda chars: passkey_prompt(MAX_KEY, chars, depth), byte_count, length, 16 * length)
    assert byte_count(passkey_prompt(MAX_KEY, n, depth)) == length, (length, n)


def test_evaluate_passkey_builds_prompts_of_exactly_each_length():
  lengths = [300, 301, 600, 1200]
  grid = evaluate_passkey(lambda prompts, n: ["1"] * len(prompts), byte_count, lengths, [0.5], keys_per_cell=1)
  assert grid.prompt_tokens == lengths


@pytest.mark.parametrize("chars_per_token", [2, 3, 7])
def test_coarse_tokens_get_the_most_filler_that_fits(chars_per_token):
  """When no filler size lands on the length exactly, the chosen size fits and one character more does not."""

  def count(text):
    return math.ceil(len(text) / chars_per_token)

  for length in range(count(passkey_prompt(MAX_KEY, 0, 0.5)), 400, 13):
    n = fit_characters(lambda chars: passkey_prompt(MAX_KEY, chars, 0.5), count, length, 16 * length)
    assert count(passkey_prompt(MAX_KEY, n, 0.5)) <= length < count(passkey_prompt(MAX_KEY, n + 1, 0.5)), length


def test_fit_characters_bounds():
  """Nothing fits: 0; everything fits: max_chars."""
  assert fit_characters(lambda n: "x" * (n + 10), len, 5, 100) == 0
  assert fit_characters(lambda n: "x" * n, len, 10**6, 100) == 100
  assert fit_characters(lambda n: "x" * n, len, 37, 100) == 37


class WhitespaceTokenizer:
  """One token a whitespace-separated word: the RULER cwe prompt's long form fits 4K tokens of it."""

  def encode(self, text, bos=False):
    return ["<s>"] * bos + text.split()


@pytest.mark.parametrize("context, repeats", [(3975, {6}), (3976, {30})])
def test_cwe_short_context_rule_counts_the_generation_budget(context, repeats):
  """RULER uses its short cwe setting (common words 6 times) when max_seq_length = context + 120 generated tokens
  is below 4096: 3975 + 120 = 4095 is short, 3976 + 120 = 4096 is not (common words 30 times)."""
  assert ruler.tokens_to_generate("cwe") == 120
  sample = ruler.generate_sample("cwe", context_tokens=context, tokenizer=WhitespaceTokenizer(),
                                 rng=np.random.default_rng(0))
  question = "Question: What are the 10 most common words in the above list?"
  task_list = sample.input[sample.input.rindex("Memorize the ones that appear most often.\n"):sample.input.rindex(
      question)]
  counts = collections.Counter(re.findall(r"\d+\. (\S+)", task_list))
  assert {counts[w] for w in sample.outputs} == repeats and len(sample.outputs) == 10
  assert sample.length <= context
