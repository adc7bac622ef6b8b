"""RULER's 13 synthetic long-context tasks (NVIDIA/RULER `scripts/synthetic.yaml`), generated offline.

Task sizes and templates follow RULER (`scripts/synthetic.yaml`, `scripts/data/synthetic/*.py` and
`constants.py`), with the base-model template (the task template, then its answer prefix). The families live in
ruler_niah.py, ruler_vt.py, ruler_aggregation.py and ruler_qa.py; docs/evaluation.md says where each departs from
RULER (the essays are World Factbook prose, the QA sets are written from the Factbook, words come from SCOWL).

Lengths: `generate_sample` fits the prompt, as the model sees it (BOS included), to `context_tokens`;
`evaluate_ruler` labels a result by RULER's `max_seq_length`, the prompt plus the tokens to generate.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Callable, Sequence

import numpy as np

from longjax.evaluate import ruler_aggregation, ruler_niah, ruler_qa, ruler_vt

SHORT_CONTEXT = 4096  # RULER: below this max_seq_length (prompt + generation), cwe and vt use smaller settings

# family -> (template, answer prefix, tokens to generate): scripts/data/synthetic/constants.py
TEMPLATES = {
    "niah": ruler_niah.TEMPLATE,
    "variable_tracking": ruler_vt.TEMPLATE,
    "common_words_extraction": ruler_aggregation.CWE_TEMPLATE,
    "freq_words_extraction": ruler_aggregation.FWE_TEMPLATE,
    "qa": ruler_qa.TEMPLATE,
}


def _niah(type_haystack, type_needle_k="words", type_needle_v="numbers", num_needle_k=1, num_needle_v=1,
          num_needle_q=1):
  return ("niah", dict(type_haystack=type_haystack, type_needle_k=type_needle_k, type_needle_v=type_needle_v,
                       num_needle_k=num_needle_k, num_needle_v=num_needle_v, num_needle_q=num_needle_q))


# name -> (family, options): scripts/synthetic.yaml, plus each generator script's defaults that the yaml leaves.
TASKS = {
    "niah_single_1": _niah("noise"),
    "niah_single_2": _niah("essay"),
    "niah_single_3": _niah("essay", type_needle_v="uuids"),
    "niah_multikey_1": _niah("essay", num_needle_k=4),
    "niah_multikey_2": _niah("needle"),
    "niah_multikey_3": _niah("needle", type_needle_k="uuids", type_needle_v="uuids"),
    "niah_multivalue": _niah("essay", num_needle_v=4),
    "niah_multiquery": _niah("essay", num_needle_q=4),
    # fewshot_tokens: RULER prepends one worked example fitted to 500 tokens; by default here at most a quarter of
    # the context (None), 0 drops it.
    "vt": ("variable_tracking", dict(num_chains=1, num_hops=4, fewshot_tokens=None)),
    "cwe": ("common_words_extraction", dict(freq_cw=30, freq_ucw=3, num_cw=10, num_fewshot=1)),
    "fwe": ("freq_words_extraction", dict(alpha=2.0, coded_wordlen=6, vocab_size=None)),
    "qa_1": ("qa", dict(dataset="squad")),
    "qa_2": ("qa", dict(dataset="hotpotqa")),
}


@dataclasses.dataclass(frozen=True)
class Sample:
  """A prompt (template, context, query and answer prefix), the strings a correct answer holds, its token count."""
  input: str
  outputs: list[str]
  length: int


def tokens_to_generate(task: str) -> int:
  """RULER's default generation budget for `task`."""
  return TEMPLATES[_task(task)[0]][2]


def _task(task: str) -> tuple[str, dict]:
  if task not in TASKS:
    raise ValueError(f"ruler: unknown task {task!r}; known: {', '.join(TASKS)}")
  return TASKS[task]


def _fit(build: Callable[[int], tuple[str, list[str]]], count: Callable[[str], int], budget: int,
         minimum: int, budget_name: str = "context_tokens") -> tuple[str, list[str], int]:
  """The largest haystack size n >= minimum whose prompt build(n) has at most `budget` tokens (build is
  deterministic in n; its token count grows with n), as RULER's search; returns (prompt, outputs, tokens)."""
  def tokens(n: int) -> int:
    return count(build(n)[0])

  base = tokens(minimum)
  if base > budget:
    raise ValueError(f"ruler: the smallest prompt has {base} tokens, more than {budget_name}={budget}")
  # Every haystack unit (a line, a listed word, a coded word, a document) costs at least about one token.
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


def generate_sample(task: str, *, context_tokens: int, tokenizer, rng: np.random.Generator, add_bos: bool = True,
                    **task_options) -> Sample:
  """One RULER sample of `task` whose prompt fills, without passing, `context_tokens` tokens of `tokenizer`
  (`encode(text, bos=...) -> list`), counted as the model sees it (with BOS unless add_bos=False).
  task_options override the task's sizes (see `TASKS`)."""
  family, options = _task(task)
  unknown = set(task_options) - set(options)
  if unknown:
    raise ValueError(f"ruler: {task} takes options {', '.join(options)}, not {', '.join(sorted(unknown))}")
  options = {**options, **task_options}
  count = lambda text: len(tokenizer.encode(text, bos=add_bos))  # noqa: E731
  short = context_tokens + TEMPLATES[family][2] < SHORT_CONTEXT  # RULER compares max_seq_length, generation included
  seed = int(rng.integers(2**63))
  minimum = 0
  if family == "niah":
    def build(n):
      return ruler_niah.niah(np.random.default_rng(seed), n, **options)
  elif family == "variable_tracking":
    fewshot_tokens = options.pop("fewshot_tokens")
    fewshot_tokens = min(500, context_tokens // 4) if fewshot_tokens is None else fewshot_tokens
    fewshot = ""
    if fewshot_tokens:
      shot_seed = int(rng.integers(2**63))
      prompt, variables, _ = _fit(
          lambda n: ruler_vt.vt_instance(np.random.default_rng(shot_seed), n, options["num_chains"],
                                         options["num_hops"], var_len=3),
          lambda text: len(tokenizer.encode(text)), fewshot_tokens, 0, "fewshot_tokens")
      fewshot = ruler_vt.fewshot_text(prompt, variables)

    def build(n):
      return ruler_vt.vt(np.random.default_rng(seed), n, fewshot_example=fewshot, **options)
  elif family == "common_words_extraction":
    def build(n):
      return ruler_aggregation.cwe(np.random.default_rng(seed), n, short=short, **options)
  elif family == "freq_words_extraction":
    # RULER: max_seq_length // 50, max_seq_length counting the generation budget
    vocab_size = options["vocab_size"] or max(4, (context_tokens + TEMPLATES[family][2]) // 50)
    options = {**options, "vocab_size": vocab_size}
    minimum = ruler_aggregation.fwe_minimum(options["alpha"])

    def build(n):
      return ruler_aggregation.fwe(np.random.default_rng(seed), n, **options)
  else:
    question = int(rng.integers(2**31))
    minimum = 2

    def build(n):
      return ruler_qa.qa(np.random.default_rng(seed), n, question=question, **options)
  prompt, outputs, length = _fit(build, count, context_tokens, minimum)
  return Sample(prompt, outputs, length)


def score(task: str, prediction: str, outputs: Sequence[str]) -> float:
  """RULER's metrics, ignoring case: qa is string_match_part (1 if any output is in `prediction`), the rest
  string_match_all (the fraction of `outputs` found in `prediction`)."""
  family, _ = _task(task)
  prediction = prediction.lower()
  found = [output.lower() in prediction for output in outputs]
  return float(any(found)) if family == "qa" else sum(found) / len(found)


def evaluate_ruler(generate_fn: Callable[[list[str], int], list[str]], tokenizer, tasks: Sequence[str],
                   lengths: Sequence[int], *, samples: int, seed: int, max_new_tokens: int | None = None,
                   add_bos: bool = True) -> dict[str, dict[int, float]]:
  """task -> length -> mean score over `samples` prompts. A length is RULER's max_seq_length: the prompt takes
  length - max_new_tokens tokens (default: the task's `tokens_to_generate`). generate_fn(prompts, max_new_tokens)
  returns one continuation a prompt, cut at EOS (e.g. `longjax.load(workdir).generate`)."""
  results: dict[str, dict[int, float]] = {}
  for task in tasks:
    new_tokens = tokens_to_generate(task) if max_new_tokens is None else max_new_tokens
    results[task] = {}
    for length in lengths:
      rng = np.random.default_rng([seed, zlib.crc32(task.encode()), length])
      batch = [generate_sample(task, context_tokens=length - new_tokens, tokenizer=tokenizer, rng=rng,
                               add_bos=add_bos) for _ in range(samples)]
      predictions = generate_fn([s.input for s in batch], new_tokens)
      scores = [score(task, p.strip(), s.outputs) for p, s in zip(predictions, batch)]
      results[task][int(length)] = float(np.mean(scores))
  return results
