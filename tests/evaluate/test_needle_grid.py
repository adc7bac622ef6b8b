"""The needle grids field by field: what the generate function is asked (prompts, answer budget), what the grid
holds (task, lengths, depths, trials, prompt tokens, trained length, samples), with one token a character."""

import re

import numpy as np
import pytest

from longjax.evaluate import needle
from longjax.evaluate.passkey import random_keys


class Recorder:
  """gkamradt's generate function: answers prompt i of a call with "answer {i}", remembers its calls."""

  def __init__(self):
    self.calls = []

  def __call__(self, prompts, max_new_tokens):
    self.calls.append((list(prompts), max_new_tokens))
    return [f"answer {i}" for i in range(len(prompts))]


def _context_of(prompt):
  """The haystack of a gkamradt prompt, without the needle."""
  context = prompt[prompt.index("<context>\n") + len("<context>\n"):prompt.index("\n</context>")]
  return context.replace(needle.SF_NEEDLE, "", 1)


def test_gkamradt_grid_fields_samples_and_answer_budget():
  generate = Recorder()
  lengths, depths = [600, 900], [0.25, 0.75]
  grid = needle.evaluate_needle_gkamradt(generate, len, lengths, depths, trained_length=300)
  assert (grid.task, grid.lengths, grid.depths, grid.trials, grid.trained_length) == (
      "needle_gkamradt", lengths, depths, 1, 300)
  assert grid.accuracy == [[0.0, 0.0], [0.0, 0.0]]
  assert grid.prompt_tokens == [len(prompts[0]) for prompts, _ in generate.calls] == lengths  # one token a char
  assert [len(prompts) for prompts, _ in generate.calls] == [2, 2]
  for prompts, _ in generate.calls:  # one haystack a length, the needle at each depth in turn
    assert prompts == [needle.gkamradt_prompt(_context_of(prompts[0]), d) for d in depths]
  assert [n for _, n in generate.calls] == [64, 64]  # the default answer budget
  assert grid.samples == [{"length": n, "depth": 0.25, "output": "answer 0"} for n in lengths]
  again = Recorder()
  needle.evaluate_needle_gkamradt(again, len, [600], [0.5], max_new_tokens=7)
  assert again.calls[0][1] == 7 and grid.mean_accuracy == 0.0


def test_gkamradt_haystack_is_repeated_from_the_given_text():
  generate = Recorder()
  text = "A short text. It repeats."
  grid = needle.evaluate_needle_gkamradt(generate, len, [1200], [0.0], haystack=text)
  prompt = generate.calls[0][0][0]
  context = prompt[prompt.index("<context>\n") + len("<context>\n"):prompt.index("\n</context>")]
  assert context.startswith(needle.SF_NEEDLE) and context[len(needle.SF_NEEDLE):].startswith(text + "\n\n" + text)
  assert grid.prompt_tokens == [1200] and len(context) > 600  # the 25 characters repeated well past 512


@pytest.mark.parametrize("outputs, score", [(["SANDWICH at Dolores Park"], 1.0), (["a sandwich"], 0.5),
                                            (["dolores park."], 0.5), (["nothing"], 0.0)])
def test_sf_score_is_the_fraction_of_the_two_facts(outputs, score):
  assert needle.sf_score(outputs[0]) == score


EOS = 3


def _key_reader(prompts, max_new_tokens):
  """Answers each prompt's number, then EOS and more digits (which the grid cuts off)."""
  return [[ord(c) for c in " " + re.search(r"magic number is (\d+)\.", "".join(map(chr, p))).group(1)]
          + [EOS, ord("1"), ord("7")] for p in prompts]


def test_keyed_grid_fields_samples_and_answer_budget():
  calls = []

  def generate(prompts, max_new_tokens):
    calls.append((prompts, max_new_tokens))
    return _key_reader(prompts, max_new_tokens)

  encode = lambda text: [ord(c) for c in text]  # noqa: E731
  decode = lambda ids: "".join(map(chr, ids))  # noqa: E731
  documents = ["alpha beta gamma delta " * 10]
  grid = needle.evaluate_needle(generate, encode, decode, documents, [300, 700], [0.0, 1.0], trials=2, seed=3,
                                trained_length=200, eos_id=EOS)
  assert (grid.task, grid.lengths, grid.depths, grid.trials, grid.trained_length) == (
      "needle", [300, 700], [0.0, 1.0], 2, 200)
  assert grid.accuracy == [[1.0, 1.0], [1.0, 1.0]] and grid.prompt_tokens == [300, 700]
  assert [len(p) for p, _ in calls] == [2] * 4
  # the widest default key (50000) fills each prompt to the length (230 characters of documents repeated past
  # 700); the answer budget is the answer's tokens + 1
  assert all(len(p) <= n for (prompts, _), n in zip(calls, [300, 300, 700, 700]) for p in prompts)
  keys = [[int(decode(a[:a.index(EOS)])) for a in _key_reader(prompts, 0)] for prompts, _ in calls]
  numbers = [row[0] for row in keys]
  assert [n for _, n in calls] == [max(len(f" {k}") for k in row) + 1 for row in keys]
  assert grid.samples == [{"length": n, "depth": d, "number": k, "answer": encode(f" {k}"), "output": encode(f" {k}")}
                          for (n, d), k in zip([(300, 0.0), (300, 1.0), (700, 0.0), (700, 1.0)], numbers)]


@pytest.mark.parametrize("depth", [0.41, 0.77])
def test_gkamradt_needle_goes_right_after_the_last_sentence_end_before_its_depth(depth):
  """Depths that fall inside a sentence: the needle backs off to the last ". " end, not to a word boundary."""
  context = "One sentence here. Another one follows. " * 30
  prompt = needle.gkamradt_prompt(context, depth)
  before = prompt[prompt.index("<context>\n") + len("<context>\n"):prompt.index(needle.SF_NEEDLE)]
  ends = [m.end() for m in re.finditer(r"\.", context) if m.end() <= depth * len(context)]
  assert len(before) == ends[-1]


def _keyed(lengths, depths, **kwargs):
  calls = []

  def generate(prompts, max_new_tokens):
    calls.append(([decode(p) for p in prompts], max_new_tokens))
    return _key_reader(prompts, max_new_tokens)

  encode = lambda text: [ord(c) for c in text]  # noqa: E731
  decode = lambda ids: "".join(map(chr, ids))  # noqa: E731
  grid = needle.evaluate_needle(generate, encode, decode, ["alpha beta gamma delta " * 10], lengths, depths,
                                eos_id=EOS, **kwargs)
  return grid, calls


def test_keyed_defaults_four_trials_seed_0_keys_up_to_50000():
  grid, calls = _keyed([300], [0.5, 1.0])
  assert grid.trials == 4 and [len(p) for p, _ in calls] == [4, 4]
  rng = np.random.default_rng(0)
  keys = [random_keys(rng, 4) for _ in range(2)]
  assert [[int(re.search(r"number is (\d+)\.", p).group(1)) for p in prompts] for prompts, _ in calls] == keys


@pytest.mark.parametrize("digits", [1, 3])
def test_keyed_digits_size_every_prompt_to_the_length(digits):
  """With `digits` every key has that many digits, so the widest (10^digits - 1) fills every prompt exactly."""
  grid, calls = _keyed([250, 333], [0.0, 0.5], trials=3, digits=digits)
  assert grid.prompt_tokens == [250, 333]
  for (prompts, max_new_tokens), n in zip(calls, [250, 250, 333, 333]):
    assert [len(p) for p in prompts] == [n] * 3 and max_new_tokens == digits + 2  # " " + digits + 1


def test_cut_at_stops_before_the_first_stop_token():
  assert needle.cut_at([5, 2, 7, 2], 2) == [5] and needle.cut_at((5, 7), 2) == [5, 7]
  assert needle.cut_at([5, 2], None) == [5, 2] and needle.cut_at([2], 2) == []


def _position_loop(haystack, depth, boundaries=" \n"):
  """needle_position as a plain loop: target = round(depth * n); at the ends the target itself; else just before
  the last whitespace at or before the target, or just after the last "." before it; 0 when there is none."""
  target = round(depth * len(haystack))
  if target in (0, len(haystack)):
    return target
  if boundaries == ".":
    return next((i + 1 for i in range(target - 1, -1, -1) if haystack[i] == "."), 0)
  return next((i for i in range(target, -1, -1) if haystack[i] in boundaries), 0)


def test_needle_position_is_the_plain_loop():
  """Short haystacks of letters, spaces, newlines and full stops at every depth k / n, with a boundary at the
  target, at index 0, or nowhere before it."""
  rng = np.random.default_rng(0)
  haystacks = ["abcdef", ".abc d", " abc.d", "ab cd.ef", "ab\ncd", "a"] + [
      "".join(rng.choice(list("aX .\n"), n)) for n in rng.integers(2, 12, 40)]  # X: a letter like any other
  for haystack in haystacks:
    for k in range(len(haystack) + 1):
      depth = k / len(haystack)
      assert needle.needle_position(haystack, depth) == _position_loop(haystack, depth), (haystack, depth)
      assert needle.needle_position(haystack, depth, ".") == _position_loop(haystack, depth, "."), (haystack, depth)
  for depth in (-0.1, 1.5):
    with pytest.raises(ValueError, match=r"depth must be in \[0, 1\]"):
      needle.needle_position("ab cd", depth)


def test_a_multi_character_token_that_starts_with_a_digit_extends_the_number():
  pieces = {1: " 4213", 2: "5.", 3: ".", 4: "0"}
  decode = lambda ids: "".join(pieces[i] for i in ids)  # noqa: E731
  assert not needle.is_correct([1, 2], [1], decode) and needle.is_correct([1, 3, 4], [1], decode)


def test_a_token_that_decodes_to_nothing_does_not_hide_a_digit_after_the_answer():
  pieces = {1: " 4213", 5: "", 4: "0", 3: "."}  # 5: a special token other than EOS, decoded to nothing
  decode = lambda ids: "".join(pieces[i] for i in ids)  # noqa: E731
  assert not needle.is_correct([1, 5, 4], [1], decode)  # the text reads " 42130": another number
  assert not needle.is_correct([1, 5, 5, 4], [1], decode)
  assert needle.is_correct([1, 5, 3, 4], [1], decode) and needle.is_correct([1, 5], [1], decode)


def test_haystack_text_joins_by_blank_lines_and_doubles_to_the_minimum():
  assert needle.haystack_text(["ab", "cd"], 6) == "ab\n\ncd"
  assert needle.haystack_text(["abcdef"], 6) == "abcdef"
  assert needle.haystack_text(["ab"], 5) == "ab\n\nab"
  assert needle.haystack_text(["ab", ""], 7) == "ab\n\n\n\nab\n\n"
  for documents in ([], ["", ""]):
    with pytest.raises(ValueError, match="^needle: the haystack needs at least one non-empty document$"):
      needle.haystack_text(documents, 10)
