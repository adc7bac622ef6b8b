"""Synthetic retrieval documents, and their mixing into the training stream: rate, determinism, resume."""

import dataclasses
import json
import re

import numpy as np
import pytest

from longjax.config import RETRIEVAL_TASKS, DataConfig
from longjax.data import ByteTokenizer, PackedBatches, make_batches, synthetic

TOKENIZER = ByteTokenizer()
PASSKEY = re.compile(r"The pass key is (\d+)\. Remember it\. \1 is the pass key\.\n.*"
                     r"What is the pass key\? The pass key is \1\.$", re.S)
REAL = [f"<real {i}>" for i in range(1000)]


def mixed(documents=REAL, task="passkey", **kwargs):
  args = dict(seq_len=64, batch_size=4, seed=0, shuffle=False, add_bos=False, add_eos=True, retrieval_rate=1.0)
  generator = synthetic.retrieval_generator(DataConfig(retrieval_task=task))
  return PackedBatches(documents, TOKENIZER, retrieval=generator, **{**args, **kwargs})


def documents_read(iterator):
  """The texts of the documents of one epoch, in reading order (rows overlap by one token; eos ends each)."""
  batches = list(iterator)
  inputs = np.concatenate([b["inputs"].reshape(-1)[b["segment_ids"].reshape(-1) > 0] for b in batches])
  stream = np.concatenate([inputs, batches[-1]["targets"][-1, -1:]])
  ends = np.flatnonzero(stream == TOKENIZER.eos_id)
  return [TOKENIZER.decode(piece) for piece in np.split(stream, ends + 1)[:-1]]


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def test_registry_matches_the_config_choices():
  assert set(synthetic.RETRIEVAL_TASKS) == set(RETRIEVAL_TASKS)


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_passkey_document_follows_the_landmark_template(depth):
  text = synthetic.passkey_document(np.random.default_rng(0), 1000, digits=3, depth=depth)
  lines = text.split("\n")
  assert lines[0] == synthetic.PASSKEY_INTRO and 980 <= len(text) <= 1000
  key = PASSKEY.search(text).group(1)
  assert len(key) == 3 and lines[2] == synthetic.passkey_line(int(key))
  assert lines[4] == f"{synthetic.PASSKEY_QUESTION} {key}."
  before, after = len(lines[1]), len(lines[3])
  assert {0.0: before < 2, 0.5: abs(before - after) < 25, 1.0: after < 2}[depth]
  assert lines[1].startswith("The grass is green.") or not lines[1]


def test_passkey_keys_are_seeded():
  def key(seed):
    return PASSKEY.search(synthetic.passkey_document(np.random.default_rng(seed), 300, 5, 0.5)).group(1)
  assert key(1) == key(1) and len({key(seed) for seed in range(20)}) > 15


def test_kv_recall_queries_ask_pairs_of_their_own_episode():
  text = synthetic.kv_recall_document(np.random.default_rng(0), 600, num_pairs=8, num_queries=4)
  episodes = re.findall(r"Remember: (.*)\nRecall: (.*)\n", text)
  assert len(episodes) >= 3 and len(text) <= 600
  for pairs, queries in episodes:
    pairs, queries = pairs.split(), queries.split()
    assert len(pairs) == 8 and len({p.split("=")[0] for p in pairs}) == 8 and len(queries) == 4
    assert set(queries) <= set(pairs) and all(re.fullmatch(r"[a-z]{2}=\d\d", p) for p in pairs)


def test_at_rate_one_every_document_is_a_passkey_document_of_about_a_row():
  documents = documents_read(mixed(REAL[:40], num_epochs=1))
  assert len(documents) == 40
  for text in documents:
    assert PASSKEY.search(text) and text.startswith(synthetic.PASSKEY_INTRO)
  # seq_len 64 is shorter than the template's fixed lines, so a document is the template with no filler.
  long_row = documents_read(mixed(REAL[:5], seq_len=2048, num_epochs=1))
  assert all(2000 <= len(text) + 1 <= 2049 for text in long_row)  # + eos: about a row of 2049 tokens


def test_kv_recall_documents_fill_about_a_row():
  documents = documents_read(mixed(REAL[:10], task="kv_recall", seq_len=512, num_epochs=1))
  assert all("Remember: " in text and "\nRecall: " in text and 400 < len(text) <= 512 for text in documents)


def test_at_rate_point_three_about_thirty_percent_are_synthetic():
  documents = documents_read(mixed(retrieval_rate=0.3, shuffle=True, num_epochs=1))
  synthetic_count = sum(bool(PASSKEY.search(text)) for text in documents)
  real = [text for text in documents if not PASSKEY.search(text)]
  assert len(documents) == len(REAL) and 0.25 < synthetic_count / len(REAL) < 0.35, synthetic_count
  assert set(real) <= set(REAL)


def test_mixing_is_deterministic_and_seeded():
  def stream(seed):
    return np.concatenate([b["inputs"] for b in take(mixed(retrieval_rate=0.3, shuffle_buffer=16, seed=seed), 12)])
  np.testing.assert_array_equal(stream(4), stream(4))
  assert not np.array_equal(stream(4), stream(5))


@pytest.mark.parametrize("task", ["passkey", "kv_recall"])
def test_exact_resume_with_mixing_and_shuffling(task):
  kwargs = dict(task=task, retrieval_rate=0.3, shuffle=True, shuffle_buffer=16, seed=7, process_index=1,
                process_count=2)
  iterator = mixed(**kwargs)
  take(iterator, 5)
  state = json.loads(json.dumps(iterator.get_state()))
  expected = take(iterator, 10)
  restored = mixed(**kwargs)
  restored.set_state(state)
  for got, want in zip(take(restored, 10), expected):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_make_batches_mixes_retrieval_into_the_train_split_only(corpus_config):
  config = dataclasses.replace(corpus_config, retrieval_rate=1.0, shuffle_buffer=8)
  def text(split):
    batches = make_batches(config, split=split, seq_len=512, global_batch_size=2, seed=0)
    return TOKENIZER.decode(np.concatenate([b["inputs"].reshape(-1) for b in take(batches, 4)]))
  assert "The pass key is" in text("train") and "The pass key is" not in text("validation")
