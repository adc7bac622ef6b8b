"""Synthetic retrieval documents for training, as pure functions of a numpy Generator.

passkey: the landmark-attention template (epfml/landmark-attention `run_test.py`, reused by YaRN and
LongLoRA), its lines joined by newlines, with the answer appended. kv_recall: episodes of key=value
pairs followed by queries of some of the keys (associative recall, denser retrieval than one passkey
a document, so that a tiny model can learn it).
"""

from __future__ import annotations

import string
from collections.abc import Callable

import numpy as np

from longjax.config import DataConfig

PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
                 "I will quiz you about the important information there.")
PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
PASSKEY_QUESTION = "What is the pass key? The pass key is"
KV_KEYS = tuple(a + b for a in string.ascii_lowercase for b in string.ascii_lowercase)


def _filler(n_chars: int) -> str:
  """The passkey filler repeated and cut to at most n_chars characters, at a word boundary."""
  repeats = -(-n_chars // len(PASSKEY_FILLER)) + 1
  cut = (PASSKEY_FILLER * repeats)[:max(n_chars, 0) + 1]
  return cut.rsplit(" ", 1)[0] if " " in cut else ""


def passkey_line(key: int) -> str:
  return f"The pass key is {key}. Remember it. {key} is the pass key."


def passkey_document(rng: np.random.Generator, n_chars: int, digits: int, depth: float) -> str:
  """A passkey document of about n_chars characters (never fewer than its fixed lines need): intro, filler,
  key line at `depth` (0..1) of the filler, filler, question, and the answer " {key}." of `digits` digits."""
  key = int(rng.integers(10**(digits - 1), 10**digits))
  answer = f" {key}."
  fixed = len(PASSKEY_INTRO) + len(passkey_line(key)) + len(PASSKEY_QUESTION) + len(answer) + 4  # 4 newlines
  garbage = max(n_chars - fixed, 0)
  before = int(round(garbage * depth))
  lines = [PASSKEY_INTRO, _filler(before), passkey_line(key), _filler(garbage - before), PASSKEY_QUESTION + answer]
  return "\n".join(lines)


def kv_recall_episode(rng: np.random.Generator, num_pairs: int, num_queries: int) -> str:
  """'Remember: ab=42 cd=07 ...' then 'Recall: cd=07 ...' for num_queries of the pairs, in a new order."""
  keys = rng.choice(len(KV_KEYS), num_pairs, replace=False)
  values = rng.integers(0, 100, num_pairs)
  pairs = [f"{KV_KEYS[k]}={v:02d}" for k, v in zip(keys, values)]
  queries = rng.choice(num_pairs, num_queries, replace=False)
  return "Remember: " + " ".join(pairs) + "\nRecall: " + " ".join(pairs[q] for q in queries) + "\n"


def kv_recall_document(rng: np.random.Generator, n_chars: int, num_pairs: int, num_queries: int) -> str:
  """Whole kv_recall episodes while they fit in n_chars characters (at least one)."""
  episodes = [kv_recall_episode(rng, num_pairs, num_queries)]
  while len(episodes[0]) * (len(episodes) + 1) <= n_chars:  # Episodes of one configuration have one length.
    episodes.append(kv_recall_episode(rng, num_pairs, num_queries))
  return "".join(episodes)


# data.retrieval_task -> (data config) -> (rng, n_chars) -> text; keys are config.RETRIEVAL_TASKS (a test keeps
# them equal).
RETRIEVAL_TASKS: dict[str, Callable[[DataConfig], Callable[[np.random.Generator, int], str]]] = {
    "passkey": lambda data: lambda rng, n_chars: passkey_document(rng, n_chars, data.retrieval_digits,
                                                                  depth=rng.random()),
    "kv_recall": lambda data: lambda rng, n_chars: kv_recall_document(rng, n_chars, data.retrieval_pairs,
                                                                      data.retrieval_queries),
}


def retrieval_generator(data: DataConfig) -> Callable[[np.random.Generator, int], str]:
  """`(rng, n_chars) -> document` of data.retrieval_task, its depth (passkey) drawn from rng."""
  return RETRIEVAL_TASKS[data.retrieval_task](data)
