"""Needle-in-a-haystack (gkamradt/LLMTest_NeedleInAHaystack) over real text: a sentence hidden at a depth of a
haystack of held-out documents, then a question; scored on the answer's exact tokens.

The needle goes at the last whitespace at or before depth * (haystack characters), so no word is split
(gkamradt backs off to a sentence end; source code has few). Prompt: haystack with the needle on its own
line, then the question on the last line. Right when the generated tokens begin with the tokens of
" {number}".
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from longjax.evaluate.passkey import RetrievalGrid, fit_characters, random_keys

NEEDLE = "The special magic number is {number}."
QUESTION = "What is the special magic number? The special magic number is"

# token prompts (lists of ids, any lengths), max_new_tokens -> generated ids [B, max_new_tokens]
GenerateTokens = Callable[[list[list[int]], int], np.ndarray]


def needle_position(haystack: str, depth: float) -> int:
  """Where a needle at `depth` in [0, 1] goes: the last whitespace at or before depth * len(haystack)."""
  if not 0.0 <= depth <= 1.0:
    raise ValueError(f"needle_position: depth must be in [0, 1], got {depth}")
  target = round(depth * len(haystack))
  if target in (0, len(haystack)):
    return target
  return max(0, max(haystack.rfind(" ", 0, target + 1), haystack.rfind("\n", 0, target + 1)))


def needle_prompt(haystack: str, number: int, depth: float) -> str:
  """haystack[:i] + needle on its own line + haystack[i:], then the question, i = needle_position."""
  i = needle_position(haystack, depth)
  return f"{haystack[:i]}\n{NEEDLE.format(number=number)}\n{haystack[i:]}\n{QUESTION}"


def answer_tokens(encode: Callable[[str], Sequence[int]], number: int) -> list[int]:
  """The tokens a right answer begins with: " {number}" encoded without BOS."""
  return list(encode(f" {number}"))


def is_correct(generated: Sequence[int], answer: Sequence[int]) -> bool:
  """The generated tokens begin with the answer's tokens."""
  return len(answer) > 0 and list(generated[:len(answer)]) == list(answer)


def haystack_text(documents: Sequence[str], min_chars: int) -> str:
  """Documents joined by blank lines, repeated if needed, to at least min_chars characters."""
  if not documents or not any(documents):
    raise ValueError("needle: the haystack needs at least one non-empty document")
  text = "\n\n".join(documents)
  while len(text) < min_chars:
    text = text + "\n\n" + text
  return text


def evaluate_needle(generate: GenerateTokens, encode_prompt: Callable[[str], Sequence[int]],
                    encode_answer: Callable[[str], Sequence[int]], documents: Sequence[str], lengths: Sequence[int],
                    depths: Sequence[float], *, trials: int = 4, digits: int | None = None, seed: int = 0,
                    trained_length: int | None = None) -> RetrievalGrid:
  """Needle accuracy at each (prompt length in tokens, depth) over a haystack cut from `documents`.

  encode_prompt adds what a prompt starts with (BOS); encode_answer encodes the answer as a continuation.
  """
  rng = np.random.default_rng(seed)
  widest = 50000 if digits is None else 10 ** digits - 1
  source = haystack_text(documents, 16 * max(lengths) + 256)
  count = lambda text: len(encode_prompt(text))  # noqa: E731
  accuracy, prompt_tokens, samples = [], [], []
  for length in lengths:
    n_chars = fit_characters(lambda n: needle_prompt(source[:n], widest, 0.5), count, length,
                             max_chars=min(len(source), 16 * length + 256))
    haystack = source[:n_chars]
    prompt_tokens.append(count(needle_prompt(haystack, widest, 0.5)))
    row = []
    for depth in depths:
      numbers = random_keys(rng, trials, digits)
      answers = [answer_tokens(encode_answer, n) for n in numbers]
      prompts = [list(encode_prompt(needle_prompt(haystack, n, depth))) for n in numbers]
      generated = np.asarray(generate(prompts, max(len(a) for a in answers)))
      row.append(float(np.mean([is_correct(g, a) for g, a in zip(generated.tolist(), answers)])))
      samples.append({"length": length, "depth": depth, "number": numbers[0], "answer": answers[0],
                      "output": generated[0].tolist()})
    accuracy.append(row)
  return RetrievalGrid("needle", list(lengths), [float(d) for d in depths], accuracy, trials, prompt_tokens,
                       trained_length, samples)
