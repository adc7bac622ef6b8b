"""RULER's synthetic long-context tasks that need no download (NVIDIA/RULER `scripts/synthetic.yaml`).

Tasks, their sizes and templates follow RULER (`scripts/synthetic.yaml`, `scripts/data/synthetic/*.py`,
`scripts/data/synthetic/constants.py`), with the base model template (the task template, then its answer prefix).
Where the yaml uses Paul Graham essays (niah_multivalue, niah_multiquery) the haystack here is RULER's noise
haystack. Word keys are two words of `data/words.txt` joined by a hyphen (RULER: adjective-noun from
`wonderwords`), and cwe draws its words from that list too.

Lengths: `generate_sample` fits the prompt to `context_tokens`; `evaluate_ruler` labels a result by RULER's
`max_seq_length`, the prompt plus the tokens to generate.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import string
import uuid
import zlib
from typing import Callable, Sequence

import numpy as np
from scipy.special import zeta

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."

# (template, answer prefix, tokens to generate) per RULER task family: scripts/data/synthetic/constants.py.
TEMPLATES = {
    "niah": (
        "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will "
        "quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} "
        "for {query} mentioned in the provided text?",
        " The special magic {type_needle_v} for {query} mentioned in the provided text are", 128),
    "variable_tracking": (
        "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
        "Question: Find all variables that are assigned the value {query} in the text above.",
        " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are assigned "
        "the value {query}, they are: ", 30),
    "common_words_extraction": (
        "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones "
        "that appear most often.\n{context}\nQuestion: What are the {num_cw} most common words in the above list?",
        " Answer: The top {num_cw} words that appear most often in the list are:", 120),
    "freq_words_extraction": (
        "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
        "appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
        "What are the three most frequently appeared words in the above coded text?",
        " Answer: According to the coded text above, the three most frequently appeared words are:", 50),
}

# name -> (family, options): scripts/synthetic.yaml, plus each generator script's defaults that the yaml leaves.
TASKS = {
    "niah_single_1": ("niah", dict(type_haystack="noise", type_needle_k="words", type_needle_v="numbers",
                                   num_needle_k=1, num_needle_v=1, num_needle_q=1)),
    "niah_multikey_2": ("niah", dict(type_haystack="needle", type_needle_k="words", type_needle_v="numbers",
                                     num_needle_k=1, num_needle_v=1, num_needle_q=1)),
    "niah_multikey_3": ("niah", dict(type_haystack="needle", type_needle_k="uuids", type_needle_v="uuids",
                                     num_needle_k=1, num_needle_v=1, num_needle_q=1)),
    "niah_multivalue": ("niah", dict(type_haystack="noise", type_needle_k="words", type_needle_v="numbers",
                                     num_needle_k=1, num_needle_v=4, num_needle_q=1)),
    "niah_multiquery": ("niah", dict(type_haystack="noise", type_needle_k="words", type_needle_v="numbers",
                                     num_needle_k=1, num_needle_v=1, num_needle_q=4)),
    # fewshot_tokens: RULER prepends one worked example fitted to 500 tokens; by default here at most a quarter of
    # the context (None), 0 drops it.
    "vt": ("variable_tracking", dict(num_chains=1, num_hops=4, fewshot_tokens=None)),
    "cwe": ("common_words_extraction", dict(freq_cw=30, freq_ucw=3, num_cw=10, num_fewshot=1)),
    "fwe": ("freq_words_extraction", dict(alpha=2.0, coded_wordlen=6, vocab_size=None)),
}


@dataclasses.dataclass(frozen=True)
class Sample:
  """A prompt (template, context, query and answer prefix), the strings a correct answer holds, its token count."""
  input: str
  outputs: list[str]
  length: int


@functools.cache
def words() -> tuple[str, ...]:
  """The shipped word list (`data/words.txt`, its header says where it comes from)."""
  with open(os.path.join(os.path.dirname(__file__), "data", "words.txt"), encoding="utf-8") as f:
    return tuple(line.strip() for line in f if line.strip() and not line.startswith("#"))


def tokens_to_generate(task: str) -> int:
  """RULER's default generation budget for `task`."""
  return TEMPLATES[_task(task)[0]][2]


def _task(task: str) -> tuple[str, dict]:
  if task not in TASKS:
    raise ValueError(f"ruler: unknown task {task!r}; known: {', '.join(TASKS)}")
  return TASKS[task]


def _prompt(family: str, **fields) -> str:
  template, answer_prefix, _ = TEMPLATES[family]
  return (template + answer_prefix).format(**fields)


def _scatter(rng: np.random.Generator, lines: list[str], items: Sequence[str]) -> list[str]:
  """`lines` with `items` inserted, in their order, at uniformly random places."""
  total = len(lines) + len(items)
  places = set(rng.choice(total, size=len(items), replace=False).tolist())
  lines_iter, items_iter = iter(lines), iter(items)
  return [next(items_iter) if i in places else next(lines_iter) for i in range(total)]


def _random(rng: np.random.Generator, kind: str) -> str:
  if kind == "numbers":  # seven digits, as RULER's generate_random_number
    return str(rng.integers(10**6, 10**7))
  if kind == "words":
    first, second = rng.choice(len(words()), size=2)
    return f"{words()[first]}-{words()[second]}"
  if kind == "uuids":
    return str(uuid.UUID(int=int.from_bytes(rng.bytes(16), "big"), version=4))
  raise ValueError(f"ruler: needle type {kind!r} is not one of numbers, words, uuids")


def _niah(rng, num_haystack, *, type_haystack, type_needle_k, type_needle_v, num_needle_k, num_needle_v,
          num_needle_q):
  """RULER niah.py: needles `NEEDLE` among noise lines or among distractor needles; answers are the values of the
  queried keys."""
  num_needle_k = max(num_needle_k, num_needle_q)
  keys, values, needles = [], [], []
  for _ in range(num_needle_k):
    keys.append(_random(rng, type_needle_k))
    values.append([_random(rng, type_needle_v) for _ in range(num_needle_v)])
    needles += [NEEDLE.format(type_needle_v=type_needle_v, key=keys[-1], value=v) for v in values[-1]]
  rng.shuffle(needles)
  if type_haystack == "noise":
    haystack = [NOISE] * num_haystack
  elif type_haystack == "needle":
    haystack = [NEEDLE.format(type_needle_v=type_needle_v, key=_random(rng, type_needle_k),
                              value=_random(rng, type_needle_v)) for _ in range(num_haystack)]
  else:
    raise ValueError(f"ruler: type_haystack {type_haystack!r} is not one of noise, needle (essays need a download)")
  context = "\n".join(_scatter(rng, haystack, needles))
  queried = rng.choice(num_needle_k, size=num_needle_q, replace=False).tolist()
  queries = [keys[i] for i in queried]
  query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
  template, answer_prefix, _ = TEMPLATES["niah"]
  template += answer_prefix
  if num_needle_q * num_needle_v == 1:  # RULER's singular wording
    for plural, singular in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
      template = template.replace(plural, singular)
    type_needle_v = type_needle_v[:-1]
  prompt = template.format(type_needle_v=type_needle_v, context=context, query=query)
  return prompt, [v for i in queried for v in values[i]]


def _vt_instance(rng, num_noises, num_chains, num_hops, var_len):
  """One variable-tracking prompt (RULER variable_tracking.py) and the variables of its first chain."""
  names: list[str] = []
  while len(names) < num_chains * (num_hops + 1):
    name = "".join(rng.choice(list(string.ascii_uppercase), size=var_len))
    names += [name] if name not in names else []
  lines, chains, values = [NOISE] * num_noises, [], []
  for c in range(num_chains):
    chain = names[c * (num_hops + 1):(c + 1) * (num_hops + 1)]
    chains.append(chain)
    values.append(str(rng.integers(10000, 99999)))
    statements = [f"VAR {chain[0]} = {values[-1]}"] + [f"VAR {chain[j + 1]} = VAR {chain[j]} " for j in range(num_hops)]
    lines = _scatter(rng, lines, statements)
  prompt = _prompt("variable_tracking", context="\n".join(lines), query=values[0], num_v=num_hops + 1)
  return prompt, chains[0]


def _vt(rng, num_noises, *, num_chains, num_hops, fewshot_example=""):
  prompt, outputs = _vt_instance(rng, num_noises, num_chains, num_hops, var_len=5)
  return fewshot_example + prompt, outputs


def _cwe_words(rng, num_words: int) -> list[str]:
  vocabulary = words()
  if num_words <= len(vocabulary):
    return [vocabulary[i] for i in rng.choice(len(vocabulary), size=num_words, replace=False)]
  # RULER switches to a larger dictionary here; hyphenated pairs of the list stand in for it.
  pairs: dict[str, None] = {}
  while len(pairs) < num_words:
    pairs[_random(rng, "words")] = None
  return list(pairs)


def _cwe_list(rng, num_words, common_repeats, uncommon_repeats, num_cw):
  chosen = _cwe_words(rng, num_words)
  common, uncommon = chosen[:num_cw], chosen[num_cw:]
  word_list = common * common_repeats + uncommon * uncommon_repeats
  rng.shuffle(word_list)
  return " ".join(f"{i + 1}. {w}" for i, w in enumerate(word_list)), common


def _cwe(rng, num_uncommon, *, freq_cw, freq_ucw, num_cw, num_fewshot, short):
  """RULER common_words_extraction.py: `num_cw` words repeated `freq_cw` times among words repeated `freq_ucw`
  times, after `num_fewshot` solved examples; below 4096 tokens RULER uses 6 and 1 repeats and smaller examples."""
  example_sizes, (freq_cw, freq_ucw) = ((20, 3, 1), (6, 1)) if short else ((40, 10, 3), (freq_cw, freq_ucw))
  shots = []
  for _ in range(num_fewshot):
    context, common = _cwe_list(rng, *example_sizes, num_cw)
    shots.append(_prompt("common_words_extraction", context=context, num_cw=num_cw) + " "
                 + " ".join(f"{i + 1}. {w}" for i, w in enumerate(common)))
  context, common = _cwe_list(rng, num_cw + num_uncommon, freq_cw, freq_ucw, num_cw)
  return "\n".join(shots) + "\n" + _prompt("common_words_extraction", context=context, num_cw=num_cw), common


def _fwe(rng, num_words, *, alpha, coded_wordlen, vocab_size):
  """RULER freq_words_extraction.py: coded words with zeta(alpha)-distributed counts; the most frequent is the
  noise '...', the answers are the next three."""
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
  return _prompt("freq_words_extraction", context=" ".join(coded)), vocab_list[1:4]


def _fit(build: Callable[[int], tuple[str, list[str]]], count: Callable[[str], int], budget: int,
         minimum: int, budget_name: str = "context_tokens") -> tuple[str, list[str], int]:
  """The largest haystack size n >= minimum whose prompt build(n) has at most `budget` tokens (build is
  deterministic in n; its token count grows with n), as RULER's search; returns (prompt, outputs, tokens)."""
  def tokens(n: int) -> int:
    return count(build(n)[0])

  base = tokens(minimum)
  if base > budget:
    raise ValueError(f"ruler: the smallest prompt has {base} tokens, more than {budget_name}={budget}")
  # Every haystack unit (a line, a listed word, a coded word) costs at least about one token.
  step = max(16, minimum)
  per_unit = max((tokens(minimum + step) - base) / step, 0.5)
  guess = minimum + int((budget - base) / per_unit)
  lo, hi, stride = minimum, None, max(1, guess // 64)
  if tokens(guess) <= budget:
    lo = guess
    while tokens(lo + stride) <= budget:
      lo, stride = lo + stride, stride * 2
    hi = lo + stride
  else:
    hi = guess
    while hi - stride > minimum and tokens(hi - stride) > budget:
      hi, stride = hi - stride, stride * 2
    lo = max(minimum, hi - stride)
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (mid, hi) if tokens(mid) <= budget else (lo, mid)
  prompt, outputs = build(lo)
  return prompt, outputs, count(prompt)


def generate_sample(task: str, *, context_tokens: int, tokenizer, rng: np.random.Generator, **task_options) -> Sample:
  """One RULER sample of `task` whose prompt fills, without passing, `context_tokens` tokens of `tokenizer`
  (anything with `encode(text) -> list`). task_options override the task's sizes (see `TASKS`)."""
  family, options = _task(task)
  unknown = set(task_options) - set(options)
  if unknown:
    raise ValueError(f"ruler: {task} takes options {', '.join(options)}, not {', '.join(sorted(unknown))}")
  options = {**options, **task_options}
  seed = int(rng.integers(2**63))
  minimum = 0
  if family == "niah":
    def build(n):
      return _niah(np.random.default_rng(seed), n, **options)
  elif family == "variable_tracking":
    fewshot_tokens = options.pop("fewshot_tokens")
    fewshot_tokens = min(500, context_tokens // 4) if fewshot_tokens is None else fewshot_tokens
    fewshot = ""
    if fewshot_tokens:
      shot_seed = int(rng.integers(2**63))
      prompt, variables, _ = _fit(
          lambda n: _vt_instance(np.random.default_rng(shot_seed), n, options["num_chains"], options["num_hops"],
                                 var_len=3),
          lambda text: len(tokenizer.encode(text)), fewshot_tokens, 0, "fewshot_tokens")
      fewshot = prompt + " " + " ".join(variables) + "\n"

    def build(n):
      return _vt(np.random.default_rng(seed), n, fewshot_example=fewshot, **options)
  elif family == "common_words_extraction":
    short = context_tokens + TEMPLATES[family][2] < 4096  # RULER compares max_seq_length, generation included

    def build(n):
      return _cwe(np.random.default_rng(seed), n, short=short, **options)
  else:
    vocab_size = options["vocab_size"] or max(4, context_tokens // 50)  # RULER: max_seq_length // 50
    options = {**options, "vocab_size": vocab_size}
    minimum = int(zeta(options["alpha"]) * 4 ** options["alpha"]) + 1  # the third answer occurs at least once

    def build(n):
      return _fwe(np.random.default_rng(seed), n, **options)
  prompt, outputs, length = _fit(build, lambda text: len(tokenizer.encode(text)), context_tokens, minimum)
  return Sample(prompt, outputs, length)


def score(task: str, prediction: str, outputs: Sequence[str]) -> float:
  """RULER's string_match_all: the fraction of `outputs` found in `prediction`, ignoring case (in [0, 1])."""
  _task(task)
  prediction = prediction.lower()
  return sum(output.lower() in prediction for output in outputs) / len(outputs)


def evaluate_ruler(generate_fn: Callable[[list[str], int], list[str]], tokenizer, tasks: Sequence[str],
                   lengths: Sequence[int], *, samples: int, seed: int,
                   max_new_tokens: int | None = None) -> dict[str, dict[int, float]]:
  """task -> length -> mean score over `samples` prompts. A length is RULER's max_seq_length: the prompt takes
  length - max_new_tokens tokens (default: the task's `tokens_to_generate`). generate_fn(prompts, max_new_tokens)
  returns one continuation a prompt (e.g. `longjax.load(workdir).generate`)."""
  results: dict[str, dict[int, float]] = {}
  for task in tasks:
    new_tokens = tokens_to_generate(task) if max_new_tokens is None else max_new_tokens
    results[task] = {}
    for length in lengths:
      rng = np.random.default_rng([seed, zlib.crc32(task.encode()), length])
      batch = [generate_sample(task, context_tokens=length - new_tokens, tokenizer=tokenizer, rng=rng)
               for _ in range(samples)]
      predictions = generate_fn([s.input for s in batch], new_tokens)
      scores = [score(task, p.strip(), s.outputs) for p, s in zip(predictions, batch)]
      results[task][int(length)] = float(np.mean(scores))
  return results


def plot_ruler(results: dict[str, dict[int, float]], path: str, *, title: str = "RULER") -> str:
  """A task x length heatmap of `evaluate_ruler` results, in percent, written as a PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  tasks = list(results)
  lengths = sorted({length for by_length in results.values() for length in by_length})
  grid = np.array([[100 * results[t].get(n, math.nan) for n in lengths] for t in tasks])
  fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 3, 0.5 * len(tasks) + 1.8))
  image = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
  for i, j in np.ndindex(grid.shape):
    if not math.isnan(grid[i, j]):
      ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8)
  ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
  ax.set_yticks(range(len(tasks)), tasks)
  ax.set_xlabel("length (tokens, prompt + generation)")
  ax.set_title(title)
  fig.colorbar(image, ax=ax, label="score (%)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
