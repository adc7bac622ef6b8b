"""RULER's question answering (NVIDIA/RULER `scripts/data/synthetic/qa.py`): the documents that answer a question
among distractor documents. RULER reads SQuAD (qa_1) and HotpotQA (qa_2); both need a download, so longjax writes
its own questions from the shipped World Factbook profiles (public domain): qa_1 asks one fact of one country's
document, qa_2 is two-hop like HotpotQA's bridge questions (a geography document names the country, a government
document holds the answer)."""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np

from longjax.evaluate.corpus import factbook

TEMPLATE = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other words."
    "\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given documents. "
    "Only give me the answer and do not output any other words.\n\nQuestion: {query}", " Answer:", 32)
DOCUMENT = "Document {i}:\n{document}"


@dataclasses.dataclass(frozen=True)
class Question:
  query: str
  outputs: tuple[str, ...]  # right answers (string_match_part: any one of them)
  documents: tuple[int, ...]  # the gold documents, indices into the set's documents


@dataclasses.dataclass(frozen=True)
class QASet:
  documents: tuple[str, ...]
  questions: tuple[Question, ...]


def _name(value: str) -> str:
  """A place without its elevation and notes: "Mont Blanc 4,807 m" -> "Mont Blanc"."""
  value = re.sub(r"\s*\(.*?\)", "", value)
  return re.sub(r"\s+-?[\d,.]+\s*m\b.*$", "", value).strip()


def _unique(records, field):
  counts = {}
  for r in records:
    counts[_name(r[field])] = counts.get(_name(r[field]), 0) + 1
  return [r for r in records if counts[_name(r[field])] == 1 and not _name(r[field]).startswith("unnamed")]


@functools.cache
def squad_like() -> QASet:
  """qa_1: one document a country; questions about its capital, highest and lowest point."""
  records = factbook()
  documents = tuple(
      f"{r['name']} is located in {r['location']}. Its capital is {r['capital']}. Its highest point is "
      f"{r['highest_point']} and its lowest point is {r['lowest_point']}. Climate: {r['climate']}. "
      f"Terrain: {r['terrain']}." for r in records)
  questions = []
  for i, r in enumerate(records):
    questions.append(Question(f"What is the capital of {r['name']}?", (_name(r["capital"]),), (i,)))
    if not _name(r["highest_point"]).startswith("unnamed"):
      questions.append(Question(f"What is the highest point of {r['name']}?", (_name(r["highest_point"]),), (i,)))
  return QASet(documents, tuple(questions))


@functools.cache
def hotpot_like() -> QASet:
  """qa_2: a geography and a government document a country (title, newline, text); bridge questions need both."""
  records = factbook()
  geography = [f"Geography of {r['name']}\n{r['name']} is located in {r['location']}. Its highest point is "
               f"{r['highest_point']} and its lowest point is {r['lowest_point']}. Terrain: {r['terrain']}."
               for r in records]
  government = [f"Government of {r['name']}\nThe {r['long_name']} has its capital at {r['capital']}. "
                f"Climate around the country: {r['climate']}." for r in records]
  documents = tuple(geography + government)
  index = {r["name"]: i for i, r in enumerate(records)}
  questions = []
  for r in _unique(records, "highest_point"):
    i = index[r["name"]]
    questions.append(Question(f"What is the capital of the country whose highest point is "
                              f"{_name(r['highest_point'])}?", (_name(r["capital"]),), (i, len(records) + i)))
  for r in _unique(records, "capital"):
    i = index[r["name"]]
    questions.append(Question(f"What is the highest point of the country whose capital is {_name(r['capital'])}?",
                              (_name(r["highest_point"]),), (len(records) + i, i)))
  return QASet(documents, tuple(questions))


DATASETS = {"squad": squad_like, "hotpotqa": hotpot_like}


def qa(rng: np.random.Generator, num_docs: int, *, dataset: str, question: int) -> tuple[str, list[str]]:
  """The gold documents of question `question` among num_docs documents: distractors are a prefix of one seeded
  permutation of the others (more documents only add documents); past the set's size the set is repeated, as
  RULER's qa.py does. Documents are shuffled and numbered."""
  qa_set = DATASETS[dataset]()
  item = qa_set.questions[question % len(qa_set.questions)]
  if num_docs < len(qa_set.documents):
    others = [i for i in rng.permutation(len(qa_set.documents)).tolist() if i not in item.documents]
    chosen = list(item.documents) + others[:max(0, num_docs - len(item.documents))]
  else:
    chosen = (list(range(len(qa_set.documents))) * -(-num_docs // len(qa_set.documents)))[:num_docs]
  rng.shuffle(chosen)
  context = "\n\n".join(DOCUMENT.format(i=i + 1, document=qa_set.documents[d]) for i, d in enumerate(chosen))
  return (TEMPLATE[0] + TEMPLATE[1]).format(context=context, query=item.query), list(item.outputs)
