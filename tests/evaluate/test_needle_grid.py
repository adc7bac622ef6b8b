"""The needle grids field by field: what the generate function is asked (prompts, answer budget), what the grid
holds (task, lengths, depths, trials, prompt tokens, trained length, samples), with one token a character."""

import re

import pytest

from longjax.evaluate import needle


class Recorder:
  """gkamradt's generate function: answers prompt i of a call with "answer {i}", remembers its calls."""

  def __init__(self):
    self.calls = []

  def __call__(self, prompts, max_new_tokens):
    self.calls.append((list(prompts), max_new_tokens))
    return [f"answer {i}" for i in range(len(prompts))]


def _context_of(prompt):
  """The haystack of a gkamradt prompt, without the needle."""
  context = prompt[prompt.index("<context>\n") + len("<context>\n"):prompt.index("\n</context>")]
  return context.replace(needle.SF_NEEDLE, "", 1)


def test_gkamradt_grid_fields_samples_and_answer_budget():
  generate = Recorder()
  lengths, depths = [600, 900], [0.25, 0.75]
  grid = needle.evaluate_needle_gkamradt(generate, len, lengths, depths, trained_length=300)
  assert (grid.task, grid.lengths, grid.depths, grid.trials, grid.trained_length) == (
      "needle_gkamradt", lengths, depths, 1, 300)
  assert grid.accuracy == [[0.0, 0.0], [0.0, 0.0]]
  assert grid.prompt_tokens == [len(prompts[0]) for prompts, _ in generate.calls] == lengths  # one token a char
  assert [len(prompts) for prompts, _ in generate.calls] == [2, 2]
  for prompts, _ in generate.calls:  # one haystack a length, the needle at each depth in turn
    assert prompts == [needle.gkamradt_prompt(_context_of(prompts[0]), d) for d in depths]
  assert [n for _, n in generate.calls] == [64, 64]  # the default answer budget
  assert grid.samples == [{"length": n, "depth": 0.25, "output": "answer 0"} for n in lengths]
  again = Recorder()
  needle.evaluate_needle_gkamradt(again, len, [600], [0.5], max_new_tokens=7)
  assert again.calls[0][1] == 7 and grid.mean_accuracy == 0.0


def test_gkamradt_haystack_is_repeated_from_the_given_text():
  generate = Recorder()
  text = "A short text. It repeats."
  grid = needle.evaluate_needle_gkamradt(generate, len, [1200], [0.0], haystack=text)
  prompt = generate.calls[0][0][0]
  context = prompt[prompt.index("<context>\n") + len("<context>\n"):prompt.index("\n</context>")]
  assert context.startswith(needle.SF_NEEDLE) and context[len(needle.SF_NEEDLE):].startswith(text + "\n\n" + text)
  assert grid.prompt_tokens == [1200] and len(context) > 600  # the 25 characters repeated well past 512


@pytest.mark.parametrize("outputs, score", [(["SANDWICH at Dolores Park"], 1.0), (["a sandwich"], 0.5),
                                            (["dolores park."], 0.5), (["nothing"], 0.0)])
def test_sf_score_is_the_fraction_of_the_two_facts(outputs, score):
  assert needle.sf_score(outputs[0]) == score


def _key_reader(prompts, max_new_tokens):
  return [[ord(c) for c in " " + re.search(r"magic number is (\d+)\.", "".join(map(chr, p))).group(1)]
          for p in prompts]


def test_keyed_grid_fields_samples_and_answer_budget():
  calls = []

  def generate(prompts, max_new_tokens):
    calls.append((prompts, max_new_tokens))
    return _key_reader(prompts, max_new_tokens)

  encode = lambda text: [ord(c) for c in text]  # noqa: E731
  decode = lambda ids: "".join(map(chr, ids))  # noqa: E731
  documents = ["alpha beta gamma delta " * 10]
  grid = needle.evaluate_needle(generate, encode, decode, documents, [300, 400], [0.0, 1.0], trials=2, seed=3,
                                trained_length=200)
  assert (grid.task, grid.lengths, grid.depths, grid.trials, grid.trained_length) == (
      "needle", [300, 400], [0.0, 1.0], 2, 200)
  assert grid.accuracy == [[1.0, 1.0], [1.0, 1.0]] and grid.prompt_tokens == [300, 400]
  assert [len(p) for p, _ in calls] == [2] * 4
  # the widest default key (50000) fills each prompt to the length; the answer budget is its tokens + 1
  assert all(len(p) <= n for (prompts, _), n in zip(calls, [300, 300, 400, 400]) for p in prompts)
  numbers = [int(decode(_key_reader(prompts[:1], 0)[0])) for prompts, _ in calls]
  assert [n for _, n in calls] == [max(len(f" {int(decode(a))}") for a in _key_reader(p, 0)) + 1 for p, _ in calls]
  assert grid.samples == [{"length": n, "depth": d, "number": k, "answer": encode(f" {k}"), "output": encode(f" {k}")}
                          for (n, d), k in zip([(300, 0.0), (300, 1.0), (400, 0.0), (400, 1.0)], numbers)]


@pytest.mark.parametrize("depth", [0.41, 0.77])
def test_gkamradt_needle_goes_right_after_the_last_sentence_end_before_its_depth(depth):
  """Depths that fall inside a sentence: the needle backs off to the last ". " end, not to a word boundary."""
  context = "One sentence here. Another one follows. " * 30
  prompt = needle.gkamradt_prompt(context, depth)
  before = prompt[prompt.index("<context>\n") + len("<context>\n"):prompt.index(needle.SF_NEEDLE)]
  ends = [m.end() for m in re.finditer(r"\.", context) if m.end() <= depth * len(context)]
  assert len(before) == ends[-1]
