"""RULER's needle-in-a-haystack family (NVIDIA/RULER `scripts/data/synthetic/niah.py`): key-value needles among
noise sentences, distractor needles or essay prose; the answer is every value of the queried keys."""

from __future__ import annotations

import functools
import re
import uuid
from typing import Sequence

import numpy as np

from longjax.evaluate.corpus import essays, words

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will "
    "quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} "
    "for {query} mentioned in the provided text?",
    " The special magic {type_needle_v} for {query} mentioned in the provided text are", 128)
DEPTHS = np.round(np.linspace(0, 100, num=40)).astype(int)  # RULER niah.py: where essay needles may go (percent)


def random_value(rng: np.random.Generator, kind: str) -> str:
  """A needle key or value: seven digits, two words joined by a hyphen, or a UUID4 (RULER's generate_random)."""
  if kind == "numbers":
    return str(rng.integers(10**6, 10**7))
  if kind == "words":  # RULER: adjective-noun from wonderwords; here two words of the shipped list
    first, second = rng.choice(len(words()), size=2)
    return f"{words()[first]}-{words()[second]}"
  if kind == "uuids":
    return str(uuid.UUID(int=int.from_bytes(rng.bytes(16), "big"), version=4))
  raise ValueError(f"ruler: needle type {kind!r} is not one of numbers, words, uuids")


def scatter(rng: np.random.Generator, lines: list[str], items: Sequence[str]) -> list[str]:
  """`lines` with `items` inserted, in their order, at uniformly random places."""
  total = len(lines) + len(items)
  places = set(rng.choice(total, size=len(items), replace=False).tolist())
  lines_iter, items_iter = iter(lines), iter(items)
  return [next(items_iter) if i in places else next(lines_iter) for i in range(total)]


@functools.cache
def essay_words() -> tuple[str, ...]:
  """The prose haystack split on whitespace, as RULER splits its essays."""
  return tuple(essays().split())


def sentences(text: str) -> list[str]:
  """Sentences of `text`: split after . ! or ? and whitespace (RULER uses nltk's sent_tokenize)."""
  return re.split(r"(?<=[.!?])\s+", text.strip())


def essay_context(rng: np.random.Generator, num_words: int, needles: Sequence[str]) -> str:
  """RULER's essay haystack: the first num_words words (repeated past the end), needles placed between sentences
  at distinct depths drawn from DEPTHS, all joined by spaces."""
  haystack = essay_words()
  repeats = -(-num_words // len(haystack))
  document = sentences(" ".join(haystack[:num_words] if repeats <= 1 else (haystack * repeats)[:num_words]))
  depths = sorted(rng.choice(DEPTHS, size=len(needles), replace=False).tolist())
  cuts = [0] + [int(len(document) * depth / 100) for depth in depths] + [len(document)]
  parts = []
  for i in range(1, len(cuts)):
    parts.append(" ".join(document[cuts[i - 1]:cuts[i]]))
    if i - 1 < len(needles):
      parts.append(needles[i - 1])
  return " ".join(part for part in parts if part)  # RULER's join leaves a space before a needle at depth 0


def niah(rng: np.random.Generator, num_haystack: int, *, type_haystack: str, type_needle_k: str, type_needle_v: str,
         num_needle_k: int, num_needle_v: int, num_needle_q: int) -> tuple[str, list[str]]:
  """One prompt with a haystack of num_haystack units (noise lines, distractor needles or essay words)."""
  num_needle_k = max(num_needle_k, num_needle_q)
  keys, values, needles = [], [], []
  for _ in range(num_needle_k):
    keys.append(random_value(rng, type_needle_k))
    values.append([random_value(rng, type_needle_v) for _ in range(num_needle_v)])
    needles += [NEEDLE.format(type_needle_v=type_needle_v, key=keys[-1], value=v) for v in values[-1]]
  rng.shuffle(needles)
  if type_haystack == "essay":
    context = essay_context(rng, num_haystack, needles)
  elif type_haystack == "noise":
    context = "\n".join(scatter(rng, [NOISE] * num_haystack, needles))
  elif type_haystack == "needle":
    haystack = [NEEDLE.format(type_needle_v=type_needle_v, key=random_value(rng, type_needle_k),
                              value=random_value(rng, type_needle_v)) for _ in range(num_haystack)]
    context = "\n".join(scatter(rng, haystack, needles))
  else:
    raise ValueError(f"ruler: type_haystack {type_haystack!r} is not one of essay, noise, needle")
  queried = rng.choice(num_needle_k, size=num_needle_q, replace=False).tolist()
  queries = [keys[i] for i in queried]
  query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
  template = TEMPLATE[0] + TEMPLATE[1]
  if num_needle_q * num_needle_v == 1:  # RULER's singular wording
    for plural, singular in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
      template = template.replace(plural, singular)
    type_needle_v = type_needle_v[:-1]
  prompt = template.format(type_needle_v=type_needle_v, context=context, query=query)
  return prompt, [v for i in queried for v in values[i]]
