"""Synthetic retrieval documents for training, as pure functions of a numpy Generator.

passkey: the landmark-attention template (epfml/landmark-attention `run_test.py`, reused by YaRN and
LongLoRA), its lines joined by newlines, with the answer appended. kv_recall: episodes of key=value
pairs followed by queries of some of the keys (associative recall, denser retrieval than one passkey
a document, so that a tiny model can learn it).

The packer takes a document as `Pieces`, (text, is_answer) in reading order, so that the loss can be kept to the
answers (data.retrieval_loss="answer"): the rest of a document is template and filler, which a model predicts
early and which otherwise swamps the one answer a row holds.
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

Pieces = list[tuple[str, bool]]  # (text, is_answer), in reading order; their texts joined are the document


def _filler(n_chars: int) -> str:
  """The passkey filler repeated and cut to at most n_chars characters, at a word boundary."""
  repeats = -(-n_chars // len(PASSKEY_FILLER)) + 1
  cut = (PASSKEY_FILLER * repeats)[:max(n_chars, 0) + 1]
  return cut.rsplit(" ", 1)[0] if " " in cut else ""


def passkey_line(key: int) -> str:
  return f"The pass key is {key}. Remember it. {key} is the pass key."


def text(pieces: Pieces) -> str:
  return "".join(piece for piece, _ in pieces)


def passkey_pieces(rng: np.random.Generator, n_chars: int, digits: int, depth: float) -> Pieces:
  """A passkey document of about n_chars characters (never fewer than its fixed lines need): intro, filler,
  key line at `depth` (0..1) of the filler, filler, question, and the answer " {key}." of `digits` digits."""
  key = int(rng.integers(10**(digits - 1), 10**digits))
  answer = f" {key}."
  fixed = len(PASSKEY_INTRO) + len(passkey_line(key)) + len(PASSKEY_QUESTION) + len(answer) + 4  # 4 newlines
  garbage = max(n_chars - fixed, 0)
  before = int(round(garbage * depth))
  # The key's second mention in its line is an answer too: copying it from a few tokens back trains the same
  # copying of digits that the question needs from further away, and doubles the answers a document holds.
  mention = f"{key} is the pass key."
  first = "\n".join([PASSKEY_INTRO, _filler(before), passkey_line(key)[:-len(mention)]])
  rest = "\n".join([mention[len(str(key)):], _filler(garbage - before), PASSKEY_QUESTION])
  return [(first, False), (str(key), True), (rest, False), (answer, True)]


def passkey_document(rng: np.random.Generator, n_chars: int, digits: int, depth: float) -> str:
  """passkey_pieces as one text."""
  return text(passkey_pieces(rng, n_chars, digits, depth))


def kv_recall_episode(rng: np.random.Generator, num_pairs: int, num_queries: int) -> Pieces:
  """'Remember: ab=42 cd=07 ...' then 'Recall: cd=07 ...' for num_queries of the pairs, in a new order; the
  recalled values are the answers."""
  keys = rng.choice(len(KV_KEYS), num_pairs, replace=False)
  values = rng.integers(0, 100, num_pairs)
  pairs = [(KV_KEYS[k], f"{v:02d}") for k, v in zip(keys, values)]
  queries = rng.choice(num_pairs, num_queries, replace=False)
  pieces = [("Remember: " + " ".join(f"{k}={v}" for k, v in pairs) + "\nRecall:", False)]
  for q in queries:
    pieces += [(f" {pairs[q][0]}=", False), (pairs[q][1], True)]
  return pieces + [("\n", False)]


def kv_recall_pieces(rng: np.random.Generator, n_chars: int, num_pairs: int, num_queries: int) -> Pieces:
  """Whole kv_recall episodes while they fit in n_chars characters (at least one)."""
  episodes = [kv_recall_episode(rng, num_pairs, num_queries)]
  while len(text(episodes[0])) * (len(episodes) + 1) <= n_chars:  # Episodes of one configuration have one length.
    episodes.append(kv_recall_episode(rng, num_pairs, num_queries))
  return [piece for episode in episodes for piece in episode]


def kv_recall_document(rng: np.random.Generator, n_chars: int, num_pairs: int, num_queries: int) -> str:
  """kv_recall_pieces as one text."""
  return text(kv_recall_pieces(rng, n_chars, num_pairs, num_queries))


# data.retrieval_task -> (data config) -> (rng, n_chars) -> pieces; keys are config.RETRIEVAL_TASKS (a test keeps
# them equal).
RETRIEVAL_TASKS: dict[str, Callable[[DataConfig], Callable[[np.random.Generator, int], Pieces]]] = {
    "passkey": lambda data: lambda rng, n_chars: passkey_pieces(rng, n_chars, data.retrieval_digits,
                                                                depth=rng.random()),
    "kv_recall": lambda data: lambda rng, n_chars: kv_recall_pieces(rng, n_chars, data.retrieval_pairs,
                                                                    data.retrieval_queries),
    # Each document one of the two, even odds: kv_recall's many answers a document teach copying sooner.
    "passkey+kv_recall": lambda data: lambda rng, n_chars: RETRIEVAL_TASKS[
        ("passkey", "kv_recall")[int(rng.integers(2))]](data)(rng, n_chars),
}


def retrieval_generator(data: DataConfig) -> Callable[[np.random.Generator, int], Pieces]:
  """`(rng, n_chars) -> document pieces` of data.retrieval_task, its depth (passkey) drawn from rng."""
  return RETRIEVAL_TASKS[data.retrieval_task](data)
