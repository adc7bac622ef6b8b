"""RULER's aggregation tasks (NVIDIA/RULER `scripts/data/synthetic/common_words_extraction.py`,
`freq_words_extraction.py`): find the most common words of a long list or of a coded text."""

from __future__ import annotations

import string

import numpy as np
from scipy.special import zeta

from longjax.evaluate.corpus import words

CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones "
    "that appear most often.\n{context}\nQuestion: What are the {num_cw} most common words in the above list?",
    " Answer: The top {num_cw} words that appear most often in the list are:", 120)
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
    "appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?",
    " Answer: According to the coded text above, the three most frequently appeared words are:", 50)


def _cwe_list(rng, num_words, common_repeats, uncommon_repeats, num_cw):
  # The first num_words of one permutation of the whole list: one more word adds one word, so the prompt grows
  # by a word's tokens at a time up to 128K tokens and past (RULER switches to a second, larger list instead).
  vocabulary = words()
  if num_words > len(vocabulary):
    raise ValueError(f"ruler: cwe needs {num_words} distinct words, the list has {len(vocabulary)}")
  chosen = [vocabulary[i] for i in rng.permutation(len(vocabulary))[:num_words]]
  common, uncommon = chosen[:num_cw], chosen[num_cw:]
  word_list = common * common_repeats + uncommon * uncommon_repeats
  rng.shuffle(word_list)
  return " ".join(f"{i + 1}. {w}" for i, w in enumerate(word_list)), common


def cwe(rng: np.random.Generator, num_uncommon: int, *, freq_cw: int, freq_ucw: int, num_cw: int, num_fewshot: int,
        short: bool) -> tuple[str, list[str]]:
  """`num_cw` words repeated `freq_cw` times among words repeated `freq_ucw` times, after `num_fewshot` solved
  examples; below 4096 tokens (`short`) RULER uses 6 and 1 repeats and smaller examples."""
  example_sizes, (freq_cw, freq_ucw) = ((20, 3, 1), (6, 1)) if short else ((40, 10, 3), (freq_cw, freq_ucw))
  template = CWE_TEMPLATE[0] + CWE_TEMPLATE[1]
  shots = []
  for _ in range(num_fewshot):
    context, common = _cwe_list(rng, *example_sizes, num_cw)
    shots.append(template.format(context=context, num_cw=num_cw) + " "
                 + " ".join(f"{i + 1}. {w}" for i, w in enumerate(common)))
  context, common = _cwe_list(rng, num_cw + num_uncommon, freq_cw, freq_ucw, num_cw)
  return "\n".join(shots) + "\n" + template.format(context=context, num_cw=num_cw), common


def fwe(rng: np.random.Generator, num_words: int, *, alpha: float, coded_wordlen: int,
        vocab_size: int) -> tuple[str, list[str]]:
  """Coded words with zeta(alpha)-distributed counts; the most frequent is the noise '...', the answers are the
  next three."""
  vocab: set[str] = set()
  while len(vocab) < vocab_size:
    vocab.add("".join(rng.choice(list(string.ascii_lowercase), size=coded_wordlen)))
  vocab_list = sorted(vocab)
  rng.shuffle(vocab_list)
  vocab_list[0] = "..."
  rank = np.arange(1, vocab_size + 1)
  counts = (num_words * rank ** -alpha / zeta(alpha)).astype(int)
  coded = [w for w, count in zip(vocab_list, counts) for _ in range(count)]
  rng.shuffle(coded)
  return (FWE_TEMPLATE[0] + FWE_TEMPLATE[1]).format(context=" ".join(coded)), vocab_list[1:4]


def fwe_minimum(alpha: float) -> int:
  """The fewest coded words for which the third answer occurs at least once."""
  return int(zeta(alpha) * 4 ** alpha) + 1
