"""Needle-in-a-haystack (gkamradt/LLMTest_NeedleInAHaystack) over a lengths x depths grid, two ways:

- `evaluate_needle`: a keyed needle ("The special magic number is {number}.") on its own line in a haystack of
  held-out documents, at the last whitespace at or before depth * (haystack characters), then the question on
  the last line; right when the generated tokens begin with the answer's tokens (those that tokenizing
  prompt + " {number}" adds to the prompt's, so a SentencePiece dummy prefix cannot spoil them) and the number
  ends there (" 42135" is not 4213).
- `evaluate_needle_gkamradt`: gkamradt's own needle and question on the shipped prose haystack, the needle right
  after the last sentence end at or before the depth, in his Anthropic prompt; scored by string match on the
  needle's two facts (the original asks an LLM judge for a 1-10 score).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from longjax.evaluate.corpus import essays
from longjax.evaluate.passkey import GenerateText, RetrievalGrid, fit_characters, random_keys

NEEDLE = "The special magic number is {number}."
QUESTION = "What is the special magic number? The special magic number is"
# gkamradt `needlehaystack/run.py` and `providers/Anthropic_prompt.txt`
SF_NEEDLE = "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n"
SF_QUESTION = "What is the best thing to do in San Francisco?"
SF_PROMPT = ("You are a helpful AI bot that answers questions for a user. Keep your response short and direct\n\n"
             "Human: <context>\n{context}\n</context>\n\n{question} Don't give information outside the document or "
             "repeat your findings\n\nAssistant: Here is the most relevant sentence in the context:")
SF_ANSWERS = ("sandwich", "dolores park")  # string match, ignoring case: the fraction found

# token prompts (lists of ids, any lengths), max_new_tokens -> generated ids, one list a prompt (cut at EOS)
GenerateTokens = Callable[[list[list[int]], int], Sequence[Sequence[int]]]


def needle_position(haystack: str, depth: float, boundaries: str = " \n") -> int:
  """Where a needle at `depth` in [0, 1] goes: just after the last of `boundaries` at or before depth * length
  (whitespace: before it, so words stay whole; "." : after it, gkamradt's sentence end)."""
  if not 0.0 <= depth <= 1.0:
    raise ValueError(f"needle_position: depth must be in [0, 1], got {depth}")
  target = round(depth * len(haystack))
  if target in (0, len(haystack)):
    return target
  found = max(haystack.rfind(b, 0, target + (b != ".")) for b in boundaries)
  return found + (boundaries == ".") if found >= 0 else 0


def needle_prompt(haystack: str, number: int, depth: float) -> str:
  """haystack[:i] + needle on its own line + haystack[i:], then the question, i = needle_position."""
  i = needle_position(haystack, depth)
  return f"{haystack[:i]}\n{NEEDLE.format(number=number)}\n{haystack[i:]}\n{QUESTION}"


def answer_tokens(encode: Callable[[str], Sequence[int]], prompt: str, number: int) -> list[int]:
  """The tokens a right answer begins with: what encoding prompt + " {number}" adds to the prompt's tokens."""
  prompt_ids, full = list(encode(prompt)), list(encode(f"{prompt} {number}"))
  common = next((i for i, (a, b) in enumerate(zip(prompt_ids, full)) if a != b), min(len(prompt_ids), len(full)))
  return full[common:]


def is_correct(generated: Sequence[int], answer: Sequence[int], decode: Callable[[Sequence[int]], str]) -> bool:
  """The generated tokens begin with the answer's and the text after the answer's does not extend the number
  (its first character, tokens that decode to nothing skipped, is not a digit)."""
  generated, answer = list(generated), list(answer)
  if not answer or generated[:len(answer)] != answer:
    return False
  tail = decode(generated)[len(decode(answer)):]
  return not tail[:1].isdigit()


def cut_at(tokens: Sequence[int], stop: int | None) -> list[int]:
  """`tokens` up to, without, the first `stop`."""
  tokens = list(tokens)
  return tokens[:tokens.index(stop)] if stop is not None and stop in tokens else tokens


def haystack_text(documents: Sequence[str], min_chars: int) -> str:
  """Documents joined by blank lines, repeated if needed, to at least min_chars characters."""
  if not documents or not any(documents):
    raise ValueError("needle: the haystack needs at least one non-empty document")
  text = "\n\n".join(documents)
  while len(text) < min_chars:
    text = text + "\n\n" + text
  return text


def evaluate_needle(generate: GenerateTokens, encode_prompt: Callable[[str], Sequence[int]],
                    decode: Callable[[Sequence[int]], str], documents: Sequence[str], lengths: Sequence[int],
                    depths: Sequence[float], *, trials: int = 4, digits: int | None = None, seed: int = 0,
                    trained_length: int | None = None, eos_id: int | None = None) -> RetrievalGrid:
  """Needle accuracy at each (prompt length in tokens, depth) over a haystack cut from `documents`.

  encode_prompt encodes a prompt as the model sees it (with BOS); generated rows are cut at eos_id.
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
      texts = [needle_prompt(haystack, n, depth) for n in numbers]
      answers = [answer_tokens(encode_prompt, text, n) for text, n in zip(texts, numbers)]
      generated = generate([list(encode_prompt(text)) for text in texts], max(len(a) for a in answers) + 1)
      generated = [cut_at(g, eos_id) for g in generated]
      row.append(float(np.mean([is_correct(g, a, decode) for g, a in zip(generated, answers)])))
      samples.append({"length": length, "depth": depth, "number": numbers[0], "answer": answers[0],
                      "output": generated[0]})
    accuracy.append(row)
  return RetrievalGrid("needle", list(lengths), [float(d) for d in depths], accuracy, trials, prompt_tokens,
                       trained_length, samples)


def gkamradt_prompt(context: str, depth: float) -> str:
  """SF_NEEDLE after the last sentence end at or before depth * len(context), in SF_PROMPT."""
  i = needle_position(context, depth, ".")
  return SF_PROMPT.format(context=context[:i] + SF_NEEDLE + context[i:], question=SF_QUESTION)


def sf_score(output: str) -> float:
  """The fraction of SF_ANSWERS in `output`, ignoring case."""
  return sum(answer in output.lower() for answer in SF_ANSWERS) / len(SF_ANSWERS)


def evaluate_needle_gkamradt(generate: GenerateText, count_tokens: Callable[[str], int], lengths: Sequence[int],
                             depths: Sequence[float], *, haystack: str | None = None, max_new_tokens: int = 64,
                             trained_length: int | None = None) -> RetrievalGrid:
  """gkamradt's test: at each (prompt length in tokens, depth) one prompt (the test has no random key), scored
  by `sf_score`; the haystack is the shipped prose (`corpus.essays`) unless given, repeated as needed."""
  source = haystack_text([haystack or essays()], 8 * max(lengths) + 256)
  accuracy, prompt_tokens, samples = [], [], []
  for length in lengths:
    n_chars = fit_characters(lambda n: gkamradt_prompt(source[:n], 0.5), count_tokens, length,
                             max_chars=min(len(source), 8 * length + 256))
    context = source[:n_chars]
    prompt_tokens.append(count_tokens(gkamradt_prompt(context, 0.5)))
    if prompt_tokens[-1] > length:
      raise ValueError(f"needle: gkamradt's prompt without a haystack has {prompt_tokens[-1]} tokens, more than "
                       f"the length {length}")
    outputs = generate([gkamradt_prompt(context, depth) for depth in depths], max_new_tokens)
    accuracy.append([sf_score(out) for out in outputs])
    samples.append({"length": length, "depth": float(depths[0]), "output": outputs[0]})
  return RetrievalGrid("needle_gkamradt", list(lengths), [float(d) for d in depths], accuracy, 1, prompt_tokens,
                       trained_length, samples)
