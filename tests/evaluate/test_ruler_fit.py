"""RULER's fitting (ruler._fit and generate_sample's wiring of each family): the search returns what a plain linear
scan returns, the smallest budget gets the smallest haystack, vt's worked example gets exactly its budget, fwe's
vocabulary follows the context, samples of different generators differ, and the errors name what was wrong."""

import re

import numpy as np
import pytest

from longjax.data import ByteTokenizer
from longjax.evaluate import ruler, ruler_aggregation, ruler_niah

BYTES = ByteTokenizer()


class _Lines:
  """One token a line (plus BOS): a noise line or a statement costs exactly one token."""

  def encode(self, text, bos=True):
    return [0] * (text.count("\n") + 1 + bos)


class _Words:
  """One token a whitespace-separated word (plus BOS)."""

  def encode(self, text, bos=True):
    return [0] * (len(text.split()) + bos)


# token count of a haystack of n units: linear, sublinear (the first guess falls short), superlinear (it overshoots),
# plateaus (many sizes of one count: the largest must win)
SHAPES = {
    "linear": lambda n: 10 + 3 * n,
    "sublinear": lambda n: 10 + int(40 * n ** 0.5),
    "superlinear": lambda n: 10 + n + n * n // 40,
    "plateaus": lambda n: 10 + 5 * (n // 4),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("minimum", [0, 2])
def test_fit_returns_the_largest_size_that_fits_as_a_linear_scan_does(shape, minimum):
  t = SHAPES[shape]
  build = lambda n: ("x" * t(n), [n])  # noqa: E731
  for budget in range(t(minimum), 700):
    want = minimum
    while t(want + 1) <= budget:  # the reference: count up until the next size no longer fits
      want += 1
    assert ruler._fit(build, len, budget, minimum) == ("x" * t(want), [want], t(want)), (budget, want)


def _smallest(task, tokenizer, **options):
  """The smallest context a task accepts, as its error names it; that context is accepted, one less is not."""
  with pytest.raises(ValueError, match=r"the smallest prompt has \d+ tokens, more than context_tokens=5$") as error:
    ruler.generate_sample(task, context_tokens=5, tokenizer=tokenizer, rng=np.random.default_rng(0), **options)
  base = int(re.search(r"has (\d+) tokens", str(error.value))[1])
  with pytest.raises(ValueError, match=f"has {base} tokens, more than context_tokens={base - 1}"):
    ruler.generate_sample(task, context_tokens=base - 1, tokenizer=tokenizer, rng=np.random.default_rng(0), **options)
  return ruler.generate_sample(task, context_tokens=base, tokenizer=tokenizer, rng=np.random.default_rng(0), **options)


def test_the_smallest_context_takes_the_smallest_haystack():
  """No noise line for niah and vt, no uncommon word for cwe, two documents for qa (RULER's floor)."""
  s = _smallest("niah_single_1", BYTES)
  assert s.input.count(ruler_niah.NOISE) == 0 and s.input.count("One of the special magic") == 1
  s = _smallest("vt", _Lines(), fewshot_tokens=0)
  assert s.input.startswith("Memorize") and s.input.count("Memorize") == 1
  assert s.input.count(ruler_niah.NOISE) == 0 and len(re.findall(r"^VAR ", s.input, re.M)) == 5
  s = _smallest("cwe", _Words())
  task = s.input.rsplit("Memorize the ones that appear most often.\n", 1)[1].split("\nQuestion:")[0]
  assert len(set(re.findall(r"\d+\. (\S+)", task))) == 10  # the ten common words only
  s = _smallest("qa_1", _Lines())
  assert re.findall(r"^Document (\d+):$", s.input, re.M) == ["1", "2"]


def _shot(prompt):
  """vt's worked example: its prompt (to its answer prefix), before the answer and the task."""
  shot = prompt[:prompt.rindex("Memorize and track")]
  return shot[:shot.rindex("they are: ") + len("they are: ")]


@pytest.mark.parametrize("context, budget", [(1600, 400), (4000, 500)])
def test_vt_example_fills_a_quarter_of_the_context_up_to_500_tokens(context, budget):
  """RULER fits the example to 500 tokens; here at most a quarter of the context. One token a line, so the
  example's prompt (BOS counted) lands on its budget exactly."""
  s = ruler.generate_sample("vt", context_tokens=context, tokenizer=_Lines(), rng=np.random.default_rng(1))
  shot = _shot(s.input)
  assert len(_Lines().encode(shot)) == budget and shot.count(ruler_niah.NOISE) == budget - 9
  assert s.length == context


def test_vt_example_of_the_smallest_budget_and_one_less():
  """9 tokens: BOS and the example's eight lines without noise; 8 is named as fewshot_tokens."""
  s = ruler.generate_sample("vt", context_tokens=100, tokenizer=_Lines(), rng=np.random.default_rng(2),
                            fewshot_tokens=9)
  shot = _shot(s.input)
  assert len(_Lines().encode(shot)) == 9 and shot.count(ruler_niah.NOISE) == 0
  with pytest.raises(ValueError, match="the smallest prompt has 9 tokens, more than fewshot_tokens=8$"):
    ruler.generate_sample("vt", context_tokens=100, tokenizer=_Lines(), rng=np.random.default_rng(2),
                          fewshot_tokens=8)
  # a context too small for any example: the error names the context, not the example's share of it
  with pytest.raises(ValueError, match="more than context_tokens=3$"):
    ruler.generate_sample("vt", context_tokens=3, tokenizer=_Lines(), rng=np.random.default_rng(2))


@pytest.mark.parametrize("context", [100, 2960])
def test_fwe_vocabulary_is_a_fiftieth_of_the_context_and_at_least_four(context):
  """RULER freq_words_extraction.py: vocab_size = max_seq_length // 50, max_seq_length counting the 50 tokens to
  generate (so (2960 + 50) // 50 = 60 here, not 2960 // 50 = 59); here at least 4 (the answers are ranks 2-4). The
  sample is the family's prompt of some size n with that vocabulary, from the seed generate_sample draws first. The
  prompt shows sum_r int(n r^-2 / zeta(2)) words (r up to the vocabulary size V): at least n H/zeta(2) - V,
  H = sum_r r^-2."""
  s = ruler.generate_sample("fwe", context_tokens=context, tokenizer=_Words(), rng=np.random.default_rng(3))
  seed = int(np.random.default_rng(3).integers(2**63))
  shown = len(s.input.split("coded words. ")[1].split("\nQuestion:")[0].split())
  vocab_size = max(4, (context + 50) // 50)
  most = int((shown + vocab_size) * (np.pi ** 2 / 6) / np.sum(np.arange(1.0, vocab_size + 1) ** -2)) + 1
  prompts = [ruler_aggregation.fwe(np.random.default_rng(seed), n, alpha=2.0, coded_wordlen=6, vocab_size=vocab_size)
             for n in range(shown, most + 1)]
  assert (s.input, s.outputs) in prompts


def test_samples_of_different_generators_differ():
  """generate_sample draws its seeds (and qa's question) from the whole range: 130 generators give 130 different
  vt tasks and vt examples (a range of 126 seeds could not), and more than 62 of qa_1's 431 questions."""
  tasks, shots, questions = set(), set(), set()
  for seed in range(130):
    s = ruler.generate_sample("vt", context_tokens=60, tokenizer=_Lines(), rng=np.random.default_rng(seed))
    tasks.add(s.input[s.input.rindex("Memorize and track"):])
    shots.add(_shot(s.input))
    q = ruler.generate_sample("qa_1", context_tokens=40, tokenizer=_Lines(), rng=np.random.default_rng(seed))
    questions.add(q.input.rsplit("Question: ", 1)[1])
  assert len(tasks) == 130 and len(shots) == 130 and len(questions) > 62


def test_unknown_task_and_options_errors_list_the_choices():
  with pytest.raises(ValueError) as error:
    ruler.generate_sample("niah_single_4", context_tokens=100, tokenizer=BYTES, rng=np.random.default_rng(0))
  assert str(error.value) == "ruler: unknown task 'niah_single_4'; known: " + ", ".join(ruler.TASKS)
  assert ", ".join(ruler.TASKS).startswith("niah_single_1, niah_single_2, ") and len(ruler.TASKS) == 13
  with pytest.raises(ValueError) as error:
    ruler.generate_sample("vt", context_tokens=100, tokenizer=BYTES, rng=np.random.default_rng(0), num_hop=3,
                          chains=2)
  assert str(error.value) == "ruler: vt takes options num_chains, num_hops, fewshot_tokens, not chains, num_hop"
