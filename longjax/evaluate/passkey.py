"""Passkey retrieval (landmark-attention `run_test.py`, reused by YaRN and LongLoRA) over a lengths x depths grid.

The prompt is theirs, lines joined by newlines: the task description, a garbage prefix, the key line, a
garbage suffix and the question. Garbage is their sentence repeated, joined by single spaces, and cut to a
number of characters (prefix and suffix are both cut from the start of that repetition, as theirs are). A
model answers greedily with a few tokens; it is right when the first integer of its answer is the key.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

import numpy as np

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will "
         "quiz you about the important information there.")
GARBAGE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"
MAX_KEY = 50000  # landmark-attention: keys uniform in 1..50000

# prompts, max_new_tokens -> the generated continuations (texts)
GenerateText = Callable[[list[str], int], list[str]]


def garbage(n_chars: int) -> str:
  """The first n_chars characters of GARBAGE repeated, joined by spaces."""
  repeats = n_chars // (len(GARBAGE) + 1) + 1
  return " ".join([GARBAGE] * repeats)[:n_chars]


def passkey_prompt(key: int, n_garbage: int, depth: float) -> str:
  """The landmark-attention prompt with n_garbage filler characters, round(depth * n_garbage) before the key."""
  if not 0.0 <= depth <= 1.0:
    raise ValueError(f"passkey_prompt: depth must be in [0, 1], got {depth}")
  n_prefix = round(depth * n_garbage)
  information = f"The pass key is {key}. Remember it. {key} is the pass key."
  return "\n".join([INTRO, garbage(n_prefix), information, garbage(n_garbage - n_prefix), QUESTION])


def random_keys(rng: np.random.Generator, count: int, digits: int | None = None) -> list[int]:
  """Keys uniform in 1..50000 (the protocol), or in the `digits`-digit numbers."""
  low, high = (1, MAX_KEY) if digits is None else (10 ** (digits - 1), 10 ** digits - 1)
  return [int(k) for k in rng.integers(low, high + 1, count)]


def first_integer(text: str) -> int | None:
  match = re.search(r"\d+", text)
  return int(match.group()) if match else None


def fit_characters(make_prompt: Callable[[int], str], count_tokens: Callable[[str], int], length: int,
                   max_chars: int) -> int:
  """The most filler characters n <= max_chars for which make_prompt(n) has at most `length` tokens (0 if none)."""
  low, high = 0, max_chars
  while low < high:  # token counts grow with the characters: bisect
    middle = (low + high + 1) // 2
    if count_tokens(make_prompt(middle)) <= length:
      low = middle
    else:
      high = middle - 1
  return low


@dataclasses.dataclass(frozen=True)
class RetrievalGrid:
  """Accuracy of a retrieval task at each (length, depth): accuracy[i][j] for lengths[i], depths[j]."""

  task: str
  lengths: list[int]  # target prompt lengths (tokens)
  depths: list[float]
  accuracy: list[list[float]]
  trials: int  # prompts per cell
  prompt_tokens: list[int]  # the longest prompt actually built at each length
  trained_length: int | None = None
  samples: list[dict] = dataclasses.field(default_factory=list)  # a few (prompt tail, answer, output) examples

  @property
  def mean_accuracy(self) -> float:
    return float(np.mean(self.accuracy)) if self.accuracy else float("nan")

  def table(self) -> str:
    header = "length \\ depth " + " ".join(f"{d:>6.2f}" for d in self.depths)
    rows = [f"{n:>14d} " + " ".join(f"{a:>6.2f}" for a in accs) for n, accs in zip(self.lengths, self.accuracy)]
    return "\n".join([f"{self.task}: accuracy ({self.trials} per cell, mean {self.mean_accuracy:.3f})", header, *rows])


def evaluate_passkey(generate: GenerateText, count_tokens: Callable[[str], int], lengths: Sequence[int],
                     depths: Sequence[float], *, keys_per_cell: int = 5, digits: int | None = None, seed: int = 0,
                     max_new_tokens: int | None = None, trained_length: int | None = None) -> RetrievalGrid:
  """Passkey accuracy at each (length in tokens, depth); `generate` and `count_tokens` are the model's.

  At each length the filler is the most characters for which the prompt (with the longest key) has at most
  that many tokens; keys are drawn with `seed`, `keys_per_cell` per cell.
  """
  rng = np.random.default_rng(seed)
  widest_key = MAX_KEY if digits is None else 10 ** digits - 1
  max_new_tokens = max_new_tokens or len(str(widest_key)) + 4
  accuracy, prompt_tokens, samples = [], [], []
  for length in lengths:
    n_garbage = fit_characters(lambda n: passkey_prompt(widest_key, n, 0.5), count_tokens, length,
                               max_chars=16 * length + 256)
    prompt_tokens.append(count_tokens(passkey_prompt(widest_key, n_garbage, 0.5)))
    row = []
    for depth in depths:
      keys = random_keys(rng, keys_per_cell, digits)
      outputs = generate([passkey_prompt(k, n_garbage, depth) for k in keys], max_new_tokens)
      row.append(float(np.mean([first_integer(out) == k for k, out in zip(keys, outputs)])))
      samples.append({"length": length, "depth": depth, "key": keys[0], "output": outputs[0]})
    accuracy.append(row)
  return RetrievalGrid("passkey", list(lengths), [float(d) for d in depths], accuracy, keys_per_cell, prompt_tokens,
                       trained_length, samples)
