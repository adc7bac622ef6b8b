"""evaluate_passkey's grid field by field (what the generate function is asked, what comes back), the key ranges
random_keys draws from, and the filler text."""

import re

import numpy as np

from longjax.evaluate import evaluate_passkey, passkey_prompt
from longjax.evaluate.passkey import GARBAGE, MAX_KEY, RetrievalGrid, garbage, random_keys


class Recorder:
  """A generate function that answers each prompt's key and remembers its calls."""

  def __init__(self):
    self.calls = []

  def __call__(self, prompts, max_new_tokens):
    self.calls.append((list(prompts), max_new_tokens))
    return [f" {_key_of(p)}." for p in prompts]


def _key_of(prompt):
  return int(re.search(r"The pass key is (\d+)", prompt).group(1))


def test_grid_fields_and_samples():
  generate = Recorder()
  grid = evaluate_passkey(generate, len, [300, 400], [0, 1], keys_per_cell=2, seed=5, trained_length=256)
  assert (grid.task, grid.lengths, grid.depths, grid.trials, grid.trained_length) == ("passkey", [300, 400],
                                                                                       [0.0, 1.0], 2, 256)
  assert all(type(d) is float for d in grid.depths) and grid.accuracy == [[1.0, 1.0], [1.0, 1.0]]
  assert [len(prompts) for prompts, _ in generate.calls] == [2, 2, 2, 2]
  cells = [(n, d) for n in (300, 400) for d in (0.0, 1.0)]
  expected = [{"length": n, "depth": d, "key": _key_of(prompts[0]),
               "output": generate(prompts[:1], 0)[0]} for (n, d), (prompts, _) in zip(cells, generate.calls)]
  assert grid.samples == expected


def test_defaults_five_keys_a_cell_seed_0_and_room_for_the_widest_key():
  generate = Recorder()
  grid = evaluate_passkey(generate, len, [300], [0.5])
  assert grid.trials == 5 and [len(p) for p, _ in generate.calls] == [5]
  assert generate.calls[0][1] == len(str(MAX_KEY)) + 4  # the answer's digits and a few tokens more
  again = Recorder()
  evaluate_passkey(again, len, [300], [0.5], seed=0)
  assert again.calls == generate.calls and grid.trained_length is None


def test_digits_size_the_prompt_for_the_widest_key_of_that_many_digits():
  """With `digits` every key has exactly that many digits, so every prompt has exactly the length (one token a
  character); the answer budget is the digits plus 4."""
  for digits in (1, 2, 3):
    generate = Recorder()
    grid = evaluate_passkey(generate, len, [250, 333], [0.0, 0.5], keys_per_cell=4, digits=digits)
    assert grid.prompt_tokens == [250, 333]
    for prompts, max_new_tokens in generate.calls:
      assert max_new_tokens == digits + 4
      assert all(len(p) in (250, 333) for p in prompts)
      assert all(len(str(_key_of(p))) == digits for p in prompts)


class RecordingRng:
  def __init__(self):
    self.calls = []

  def integers(self, low, high, size):
    self.calls.append((low, high, size))
    return np.full(size, low)


def test_random_keys_draw_from_the_whole_range():
  """1..50000 by default (landmark-attention), else every `digits`-digit number (high end included)."""
  rng = RecordingRng()
  assert random_keys(rng, 3) == [1, 1, 1]
  random_keys(rng, 2, digits=1)
  random_keys(rng, 4, digits=3)
  assert rng.calls == [(1, MAX_KEY + 1, 3), (1, 10, 2), (100, 1000, 4)]


def test_garbage_is_a_prefix_of_the_repeated_sentence():
  repeated = " ".join([GARBAGE] * 20)
  for n in list(range(0, 3 * len(GARBAGE))) + [1000, 1500]:
    assert garbage(n) == repeated[:n]
  assert passkey_prompt(7, 0, 0.5).count("\n") == 4


def test_table():
  grid = RetrievalGrid("passkey", [128, 1024], [0.0, 0.5], [[1.0, 0.5], [0.25, 0.0]], 4, [128, 1024])
  assert grid.table() == ("passkey: accuracy (4 per cell, mean 0.438)\n"
                          "length \\ depth   0.00   0.50\n"
                          "           128   1.00   0.50\n"
                          "          1024   0.25   0.00")
