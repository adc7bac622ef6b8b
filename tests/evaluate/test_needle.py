"""Needle-in-a-haystack: the needle sits at its depth, answers are scored on the tokens the answer takes after the
prompt (right with a SentencePiece dummy prefix), as whole numbers, and cut at EOS; gkamradt's needle test."""

import re

import numpy as np
import pytest

from longjax.data.tokenizer import ByteTokenizer
from longjax.evaluate import needle, plots
from longjax.evaluate.needle import NEEDLE, QUESTION, is_correct, needle_position, needle_prompt

HAYSTACK = " ".join(f"word{i}" for i in range(400))  # 3,889 characters, words of 5-7 characters
DOCUMENTS = ["def f():\n  return 1\n" * 20, "class A:\n  pass\n" * 30]


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


def test_scorer_needs_the_answer_tokens_first_and_a_whole_number():
  decode = ByteTokenizer().decode
  digits = lambda text: ByteTokenizer().encode(text)  # noqa: E731
  assert is_correct(digits(" 4213."), digits(" 4213"), decode)
  assert is_correct(digits(" 4213"), digits(" 4213"), decode)
  assert not is_correct(digits(" 42135"), digits(" 4213"), decode)  # a longer number is another number
  assert not is_correct(digits(" 421"), digits(" 4213"), decode)
  assert not is_correct(digits("  4213"), digits(" 4213"), decode)
  assert not is_correct(digits(" 4213"), [], decode)


def _number(text):
  return int(re.search(r"magic number is (\d+)\.", text).group(1))


def _continuation(tokenizer, prompt_ids, text):
  """What a model trained on this tokenizer emits after the prompt to say `text`: the tokens that tokenizing the
  prompt with the text adds."""
  full = tokenizer.encode(tokenizer.decode(prompt_ids) + text, bos=True)
  common = next(i for i, (a, b) in enumerate(zip(prompt_ids + [-1], full)) if a != b)
  return full[common:]


def _grid(tokenizer, answer, **kwargs):
  """The needle grid with a model that answers answer(number) after each prompt, then EOS and more digits."""
  seen = []

  def model(prompts, max_new_tokens):
    seen.append([_number(tokenizer.decode(p)) for p in prompts])
    rows = [_continuation(tokenizer, list(p), answer(n)) + [tokenizer.eos_id] + tokenizer.encode("17")
            for p, n in zip(prompts, seen[-1])]
    return [row[:max_new_tokens] for row in rows]

  grid = needle.evaluate_needle(model, lambda text: tokenizer.encode(text, bos=True), tokenizer.decode, DOCUMENTS,
                         [256, 512], [0.0, 0.5, 1.0], eos_id=tokenizer.eos_id, **kwargs)
  return grid, seen


@pytest.mark.parametrize("name", ["byte", "sentencepiece", "tokenizer.json"])
def test_a_reader_scores_fully_with_every_tokenizer(tokenizers, name):
  """Defect: the answer was " 4213" encoded alone; SentencePiece's dummy prefix adds a "▁" token the prompt's
  continuation does not have, so a right answer scored wrong."""
  tokenizer = tokenizers[name]
  grid, _ = _grid(tokenizer, lambda n: f" {n}", trials=3)
  assert grid.accuracy == [[1.0] * 3] * 2
  assert all(n - 8 <= tokens <= n for n, tokens in zip([256, 512], grid.prompt_tokens))


@pytest.mark.parametrize("name", ["byte", "sentencepiece", "tokenizer.json"])
def test_a_guesser_scores_how_often_its_guess_is_the_number(tokenizers, name):
  grid, seen = _grid(tokenizers[name], lambda n: " 3", trials=40, digits=1)
  assert [a for row in grid.accuracy for a in row] == [np.mean([k == 3 for k in keys]) for keys in seen]
  assert 0.0 < grid.mean_accuracy < 0.5


def test_a_longer_number_is_wrong():
  """Defect: a prefix check took " 42135" for 4213."""
  grid, _ = _grid(ByteTokenizer(), lambda n: f" {n}5", trials=3)
  assert grid.mean_accuracy == 0.0


@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_gkamradt_needle_goes_after_a_sentence_end(depth):
  context = "One sentence here. Another one follows. " * 30
  prompt = needle.gkamradt_prompt(context, depth)
  before = prompt[prompt.index("<context>\n") + len("<context>\n"):prompt.index(needle.SF_NEEDLE)]
  assert before in ("", context) or before.endswith(".")  # depth 1: at the very end, as gkamradt
  assert depth * len(context) - len("Another one follows. ") <= len(before) <= depth * len(context)
  assert prompt.endswith(f"{needle.SF_QUESTION} Don't give information outside the document or repeat your findings\n\n"
                         "Assistant: Here is the most relevant sentence in the context:")


@pytest.mark.parametrize("name", ["byte", "sentencepiece", "tokenizer.json"])
def test_gkamradt_grid_heatmap_and_string_match(tokenizers, name, tmp_path):
  tokenizer = tokenizers[name]
  count = lambda text: len(tokenizer.encode(text, bos=True))  # noqa: E731

  def reader(prompts, max_new_tokens):
    return [re.search(r"\nThe best thing to do in San Francisco is ([^\n]+)\n", p).group(1) for p in prompts]

  lengths, depths = [600, 1200], [0.0, 0.5, 1.0]
  grid = needle.evaluate_needle_gkamradt(reader, count, lengths, depths)
  assert grid.accuracy == [[1.0] * 3] * 2
  assert all(n - 30 <= tokens <= n for n, tokens in zip(lengths, grid.prompt_tokens))
  half = needle.evaluate_needle_gkamradt(lambda prompts, n: ["Eat a SANDWICH."] * len(prompts), count, lengths, depths)
  assert half.accuracy == [[0.5] * 3] * 2
  with pytest.raises(ValueError, match="more than the length 100"):
    needle.evaluate_needle_gkamradt(reader, count, [100], depths)
  path = plots.plot_retrieval_heatmap(grid, str(tmp_path / "needle.png"))
  assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
