"""RULER's task families called directly (test_ruler.py reaches them through generate_sample's fitting): needle
values, scattering, the essay haystack's depths and wrap-around, niah's wording, variable tracking's chains.
References are written from RULER's scripts (`niah.py`, `variable_tracking.py`), not from the code under test."""

import collections
import re
import uuid

import numpy as np
import pytest

from longjax.evaluate import corpus, ruler_aggregation, ruler_niah, ruler_qa, ruler_vt


def test_needle_numbers_are_uniform_seven_digit_integers():
  """RULER's generate_random_number: randint(10**6, 10**7), so the whole seven-digit range, ends included."""
  rng = np.random.default_rng(0)
  numbers = [ruler_niah.random_value(rng, "numbers") for _ in range(2000)]
  assert all(re.fullmatch(r"[1-9]\d{6}", n) for n in numbers)
  values = np.array(numbers, int)
  assert values.min() < 1_050_000 and values.max() > 9_950_000  # 11 expected below, 11 above


def test_needle_words_and_uuids():
  rng = np.random.default_rng(1)
  pairs = [ruler_niah.random_value(rng, "words").split("-") for _ in range(50)]
  vocabulary = set(corpus.words())
  assert all(len(p) == 2 and p[0] in vocabulary and p[1] in vocabulary for p in pairs)
  assert len({tuple(p) for p in pairs}) == 50 and any(p[0] != p[1] for p in pairs)
  uuids = [ruler_niah.random_value(rng, "uuids") for _ in range(50)]
  assert all(str(uuid.UUID(u)) == u and uuid.UUID(u).version == 4 for u in uuids) and len(set(uuids)) == 50


def test_unknown_needle_and_haystack_types_are_named():
  with pytest.raises(ValueError, match="ruler: needle type 'letters' is not one of numbers, words, uuids"):
    ruler_niah.random_value(np.random.default_rng(0), "letters")
  with pytest.raises(ValueError, match="ruler: type_haystack 'poem' is not one of essay, noise, needle"):
    ruler_niah.niah(np.random.default_rng(0), 5, type_haystack="poem", type_needle_k="words",
                    type_needle_v="numbers", num_needle_k=1, num_needle_v=1, num_needle_q=1)


def test_scatter_keeps_both_orders_and_places_items_uniformly():
  lines, items = [f"l{i}" for i in range(5)], ["a", "b", "c"]
  rng = np.random.default_rng(2)
  for _ in range(10):
    out = ruler_niah.scatter(rng, lines, items)
    assert len(out) == 8 and [x for x in out if x[0] == "l"] == lines and [x for x in out if x[0] != "l"] == items
  for _ in range(10):  # every place taken: distinct places, or an item would be lost
    assert ruler_niah.scatter(rng, [], items) == items
  where = collections.Counter(ruler_niah.scatter(rng, ["x"] * 3, ["n"]).index("n") for _ in range(4000))
  assert sorted(where) == [0, 1, 2, 3] and all(850 < where[i] < 1150 for i in range(4))


def test_sentences_split_after_end_marks():
  assert ruler_niah.sentences("  One. Two!  Three?\nFour ") == ["One.", "Two!", "Three?", "Four"]


def _essay_reference(num_words, needles, depths):
  """RULER niah.py's essay haystack: the first num_words words (cycled), split into sentences, needle i inserted
  before sentence int(len(sentences) * depth_i / 100), depths sorted; all joined by single spaces."""
  words = ruler_niah.essay_words()
  text = " ".join(words[i % len(words)] for i in range(num_words))
  document = ruler_niah.sentences(text)
  pieces = list(document)
  for needle, depth in sorted(zip(needles, sorted(depths)), key=lambda x: -x[1]):  # last first: indices hold
    pieces.insert(int(len(document) * depth / 100), needle)
  return " ".join(pieces)


@pytest.mark.parametrize("depths", [[0], [50], [100], [25, 75]])
def test_essay_needles_go_before_the_sentence_at_their_depth(monkeypatch, depths):
  monkeypatch.setattr(ruler_niah, "DEPTHS", np.array(depths))
  needles = [f"NEEDLE{i}." for i in range(len(depths))]
  for seed in range(8):  # two depths: both used (drawn without replacement), whatever the seed
    got = ruler_niah.essay_context(np.random.default_rng(seed), 3000, needles)
    assert got == _essay_reference(3000, needles, depths), (depths, seed)


def test_essay_haystack_wraps_past_the_prose():
  size = len(ruler_niah.essay_words())
  got = ruler_niah.essay_context(np.random.default_rng(0), size + 40, [])
  assert got.split() == list(ruler_niah.essay_words()) + list(ruler_niah.essay_words()[:40])
  assert ruler_niah.essay_context(np.random.default_rng(0), 30, []).split() == list(ruler_niah.essay_words()[:30])


@pytest.mark.parametrize("haystack", ["noise", "needle", "essay"])
def test_niah_with_two_keys_two_values_and_two_queries(haystack):
  """Plural wording when queries x values > 1 (2 x 2 here), the queries joined by ", and ", every value of both
  keys the answer; the haystack holds num_haystack units besides the needles."""
  prompt, outputs = ruler_niah.niah(np.random.default_rng(3), 40, type_haystack=haystack, type_needle_k="numbers",
                                    type_needle_v="numbers", num_needle_k=3, num_needle_v=2, num_needle_q=2)
  assert prompt.startswith("Some special magic numbers are hidden within the following text.")
  assert "I will quiz you about the numbers afterwards." in prompt
  query = re.search(r"What are all the special magic numbers for (.+) mentioned in the provided text\?", prompt)[1]
  first, second = query.split(", and ")
  assert prompt.endswith(f" The special magic numbers for {query} mentioned in the provided text are")
  needles = re.findall(r"One of the special magic numbers for (\d+) is: (\d+)\.", prompt)
  values = collections.defaultdict(list)
  for key, value in needles:
    values[key].append(value)
  # the first queried key's values, then the second's (the prompt shuffles the needles, so not their order)
  assert sorted(outputs[:2]) == sorted(values[first]) and sorted(outputs[2:]) == sorted(values[second])
  context = prompt.split("\n")[1:-1]
  if haystack == "noise":
    assert len(context) == 46 and context.count(ruler_niah.NOISE) == 40
  elif haystack == "needle":  # 40 distractors with other keys, the 3 keys' 6 needles
    assert len(context) == 46 and len(needles) == 46 and len(values) == 43
  else:
    prose = re.sub(r"One of the special magic numbers for \d+ is: \d+\. ?", "", context[0])
    assert prose.split() == list(ruler_niah.essay_words()[:40]) and len(needles) == 6


def test_niah_single_wording_for_words_keys():
  prompt, outputs = ruler_niah.niah(np.random.default_rng(4), 10, type_haystack="noise", type_needle_k="words",
                                    type_needle_v="uuids", num_needle_k=1, num_needle_v=1, num_needle_q=1)
  key, value = re.search(r"One of the special magic uuids for (\S+) is: (\S+)\.", prompt).groups()
  assert prompt.startswith("A special magic uuid is hidden within the following text. Make sure to memorize it. "
                           "I will quiz you about the uuid afterwards.\n")
  assert prompt.endswith(f"What is the special magic uuid for {key} mentioned in the provided text? "
                         f"The special magic uuid for {key} mentioned in the provided text is")
  assert outputs == [value]


def _chains(prompt):
  """Variable tracking's chains read back from the prompt: value -> [the variable given it, then each copy]."""
  heads = re.findall(r"^VAR ([A-Z]+) = (\d+)$", prompt, re.M)
  copies = dict((new, old) for new, old in re.findall(r"^VAR ([A-Z]+) = VAR ([A-Z]+) $", prompt, re.M))
  chains = {}
  for head, value in heads:
    chain = [head]
    while chain[-1] in copies.values():
      chain.append(next(new for new, old in copies.items() if old == chain[-1]))
    chains[value] = chain
  return chains, len(copies)


def test_vt_with_two_chains_asks_for_the_first():
  prompt, outputs = ruler_vt.vt_instance(np.random.default_rng(5), 9, num_chains=2, num_hops=3, var_len=4)
  lines = prompt.split("\n\n")[1].split("\n")[:-1]
  assert len(lines) == 9 + 2 * 4 and lines.count(ruler_niah.NOISE) == 9
  chains, copies = _chains(prompt)
  assert len(chains) == 2 and copies == 6 and all(len(c) == 4 for c in chains.values())
  names = [v for c in chains.values() for v in c]
  assert len(set(names)) == 8 and all(re.fullmatch(r"[A-Z]{4}", v) for v in names)
  query = re.search(r"assigned the value (\d+) in the text above", prompt)[1]
  assert re.fullmatch(r"[1-9]\d{4}", query) and outputs == chains[query]
  assert prompt.endswith(f"4 variables are assigned the value {query}, they are: ")
  # the first chain's statements come before its copies: each copy after the line it copies
  for chain in chains.values():
    where = [next(i for i, line in enumerate(lines) if line.startswith(f"VAR {v} =")) for v in chain]
    assert where == sorted(where)


def test_vt_without_an_example_and_fewshot_text():
  prompt, outputs = ruler_vt.vt(np.random.default_rng(6), 4, num_chains=1, num_hops=2)
  assert prompt.startswith("Memorize and track") and len(outputs) == 3
  assert all(re.fullmatch(r"[A-Z]{5}", v) for v in outputs)
  assert ruler_vt.fewshot_text("P", ["AB", "CD"]) == "P AB CD\n\n"
  assert ruler_vt.vt(np.random.default_rng(6), 4, num_chains=1, num_hops=2, fewshot_example="E ")[0] == "E " + prompt


def _zeta(alpha):
  """Riemann zeta by its series plus the integral bound of the tail (error < 1e-12 for alpha >= 1.5)."""
  k = np.arange(1, 10**6 + 1, dtype=np.float64)
  return float(np.sum(k ** -alpha) + (10**6 + 0.5) ** (1 - alpha) / (alpha - 1))


def _listed(text):
  return collections.Counter(re.findall(r"\d+\. (\S+)", text))


@pytest.mark.parametrize("short", [True, False])
def test_cwe_example_and_task_sizes(short):
  """RULER common_words_extraction.py: below 4096 tokens the example lists 20 words (3 common x 3, the rest once)
  and the task repeats common words 6 times, the others once; otherwise 40 (10 x 10, 30 x 3) and freq_cw/freq_ucw."""
  prompt, common = ruler_aggregation.cwe(np.random.default_rng(7), 25, freq_cw=30, freq_ucw=3, num_cw=3,
                                         num_fewshot=1, short=short)
  example, task = prompt.split("\nBelow is a numbered list of words.")
  counts = _listed(example.split("Memorize the ones that appear most often.\n")[1].split("\nQuestion:")[0])
  shown = example.rsplit("in the list are: ", 1)[1]  # the example's answer: its common words, numbered
  assert sorted(re.findall(r"\d+\. (\S+)", shown)) == sorted(w for w, c in counts.items() if c == max(counts.values()))
  assert [int(n) for n in re.findall(r"(\d+)\. ", shown)] == [1, 2, 3]
  # the example: 20 words, 3 of them 3 times (short), or 40 words, 3 of them 10 times and the rest 3 times
  assert sorted(counts.values()) == ([1] * 17 + [3] * 3 if short else [3] * 37 + [10] * 3)
  listed = task.split("Memorize the ones that appear most often.\n")[1].split("\nQuestion:")[0]
  assert [int(n) for n in re.findall(r"(\d+)\. ", listed)] == list(range(1, len(re.findall(r"\d+\. ", listed)) + 1))
  counts = _listed(listed)
  assert sorted(counts.values()) == ([1] * 25 + [6] * 3 if short else [3] * 25 + [30] * 3)
  assert sorted(common) == sorted(w for w, c in counts.items() if c == max(counts.values()))
  assert task.endswith("Question: What are the 3 most common words in the above list? Answer: The top 3 words that "
                       "appear most often in the list are:")


def test_cwe_list_takes_every_word_of_the_list_and_no_more():
  vocabulary = corpus.words()
  text, common = ruler_aggregation._cwe_list(np.random.default_rng(8), len(vocabulary), 1, 1, 2)
  counts = _listed(text)
  assert len(counts) == len(vocabulary) and set(counts.values()) == {1} and common[0] in counts
  with pytest.raises(ValueError, match=f"ruler: cwe needs {len(vocabulary) + 1} distinct words, the list has "
                                       f"{len(vocabulary)}"):
    ruler_aggregation._cwe_list(np.random.default_rng(8), len(vocabulary) + 1, 1, 1, 2)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 3.0])
def test_fwe_counts_follow_zipf_and_the_minimum_shows_the_third_answer(alpha):
  """RULER freq_words_extraction.py: the word of rank r appears int(n r^-alpha / zeta(alpha)) times, rank 1 is
  '...', the answers are ranks 2-4; fwe_minimum is the least n for which rank 4 appears at all."""
  zeta = _zeta(alpha)
  minimum = ruler_aggregation.fwe_minimum(alpha)
  assert int(minimum * 4 ** -alpha / zeta) >= 1 and int((minimum - 1) * 4 ** -alpha / zeta) == 0
  n, size = 500, 12
  prompt, answers = ruler_aggregation.fwe(np.random.default_rng(9), n, alpha=alpha, coded_wordlen=5, vocab_size=size)
  coded = prompt.split("coded words. ")[1].split("\nQuestion:")[0].split()
  counts = collections.Counter(coded)
  want = [int(n * r ** -alpha / zeta) for r in range(1, size + 1)]
  assert sorted(counts.values(), reverse=True) == [c for c in want if c]
  ranked = [w for w, _ in counts.most_common()]
  assert ranked[0] == "..." and answers == ranked[1:4] and len(answers) == 3
  assert all(re.fullmatch("[a-z]{5}", w) for w in ranked[1:])


def test_qa_names_drop_notes_and_elevations():
  assert ruler_qa._name("Fako 4,095 m (on Cameroon Mountain)") == "Fako"
  assert ruler_qa._name("Sapitwa (Mount Mlanje) 3,002 m") == "Sapitwa"
  assert ruler_qa._name("Chott Melrhir -40 m") == "Chott Melrhir"
  assert ruler_qa._name("Porto-Novo (official capital)") == "Porto-Novo"
  assert ruler_qa._name("Mount 7 Peaks") == "Mount 7 Peaks"


def test_qa_unique_keeps_names_seen_once_and_not_unnamed():
  records = [{"p": "A 10 m"}, {"p": "B 5 m"}, {"p": "A (x) 12 m"}, {"p": "unnamed peak 3 m"}, {"p": "C"}]
  assert ruler_qa._unique(records, "p") == [{"p": "B 5 m"}, {"p": "C"}]


@pytest.mark.parametrize("dataset", ["squad", "hotpotqa"])
def test_qa_document_counts(dataset):
  """num_docs documents: the gold ones and distinct distractors below the set's size, the whole set repeated
  (each document as often as the others, give or take one) from it on; numbered from 1."""
  qa_set = ruler_qa.DATASETS[dataset]()
  total = len(qa_set.documents)
  question = len(qa_set.questions) + 5  # wraps to question 5
  gold = qa_set.questions[5]
  index = {d: i for i, d in enumerate(qa_set.documents)}
  assert len(index) == total
  for num_docs in (2, 7, total, total + 3):
    prompt, outputs = ruler_qa.qa(np.random.default_rng(num_docs), num_docs, dataset=dataset, question=question)
    assert prompt.endswith(f"Question: {gold.query} Answer:") and outputs == list(gold.outputs)
    numbers = [int(n) for n in re.findall(r"^Document (\d+):$", prompt, re.M)]
    assert numbers == list(range(1, num_docs + 1))
    shown = collections.Counter(
        index[doc] for doc in re.split(r"\n\nDocument \d+:\n", "\n\n" + prompt.split("given documents.\n\n")[1]
                            .split("\n\nAnswer the question based")[0])[1:])
    assert sum(shown.values()) == num_docs
    if num_docs < total:
      assert set(gold.documents) <= set(shown) and max(shown.values()) == 1
    else:
      assert set(shown) == set(range(total)) and set(shown.values()) <= {num_docs // total, -(-num_docs // total)}


def test_niah_queries_distinct_keys():
  """Queries drawn without replacement (RULER: random.sample): two queries of two keys ask for both, every seed."""
  for seed in range(12):
    prompt, outputs = ruler_niah.niah(np.random.default_rng(seed), 3, type_haystack="noise", type_needle_k="numbers",
                                      type_needle_v="numbers", num_needle_k=2, num_needle_v=1, num_needle_q=2)
    query = re.search(r"What are all the special magic numbers for (.+) mentioned in the provided text\?", prompt)[1]
    first, second = query.split(", and ")
    assert first != second and len(set(outputs)) == 2, seed


def test_vt_variable_names_are_distinct_even_when_short():
  """One-letter names (26 to draw from) for 2 chains of 4: the eight variables are still eight (RULER draws until
  it has enough distinct names)."""
  for seed in range(6):
    prompt, _ = ruler_vt.vt_instance(np.random.default_rng(seed), 2, num_chains=2, num_hops=3, var_len=1)
    chains, copies = _chains(prompt)
    names = [v for c in chains.values() for v in c]
    assert len(chains) == 2 and copies == 6 and len(set(names)) == 8, seed


class _Extremes:
  """A generator whose integers(low, high) gives the lowest value of the range (or the highest, high - 1), as
  NumPy's does for the narrowest ranges; every other draw goes to a real generator."""

  def __init__(self, seed, highest):
    self.rng, self.highest = np.random.default_rng(seed), highest

  def integers(self, low, high=None):
    low, high = (0, low) if high is None else (low, high)
    return high - 1 if self.highest else low

  def __getattr__(self, name):
    return getattr(self.rng, name)


@pytest.mark.parametrize("highest", [False, True])
def test_vt_values_span_rulers_range(highest):
  """RULER variable_tracking.py: np.random.randint(10000, 99999), so 10000 to 99998: the range's two ends."""
  prompt, outputs = ruler_vt.vt_instance(_Extremes(10, highest), 3, num_chains=1, num_hops=1, var_len=5)
  chains, _ = _chains(prompt)
  assert list(chains) == ["99998" if highest else "10000"] and outputs == chains["99998" if highest else "10000"]


def test_cwe_worked_examples_one_a_line_before_the_task():
  """num_fewshot examples (RULER's cwe has one; the option takes more): each a whole solved prompt, then a newline."""
  prompt, common = ruler_aggregation.cwe(np.random.default_rng(11), 4, freq_cw=30, freq_ucw=3, num_cw=2,
                                         num_fewshot=2, short=True)
  parts = prompt.split("\nBelow is a numbered list of words.")
  assert len(parts) == 3 and parts[0].startswith("Below is a numbered list of words.")
  for shot in parts[:2]:
    assert re.search(r"the list are: 1\. [a-z'-]+ 2\. [a-z'-]+$", shot)
  assert parts[2].endswith("the list are:") and len(common) == 2
