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


@pytest.mark.parametrize("task,rows", [("passkey", False), ("kv_recall", False), ("passkey", True)])
def test_exact_resume_with_mixing_and_shuffling(task, rows):
  kwargs = dict(task=task, retrieval_rate=0.3, shuffle=True, shuffle_buffer=16, seed=7, process_index=1,
                process_count=2, retrieval_rows=rows, retrieval_loss="answer" if rows else "all")
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


VARIED = ["".join(chr(97 + (i + j) % 26) for j in range(n)) for i, n in enumerate(range(20, 620, 7))]


def row_texts(batch):
  return [TOKENIZER.decode(row[segments > 0]) for row, segments in zip(batch["inputs"], batch["segment_ids"])]


@pytest.mark.parametrize("shuffle_buffer", [0, 16])
def test_retrieval_rows_start_a_row_and_own_it(shuffle_buffer):
  kwargs = dict(retrieval_rate=0.5, shuffle=True, seq_len=256, add_bos=True, shuffle_buffer=shuffle_buffer)
  passkeys = 0
  for batch in take(mixed(VARIED, retrieval_rows=True, **kwargs), 30):
    for row, segments, text in zip(batch["inputs"], batch["segment_ids"], row_texts(batch)):
      if "pass key" in text:  # the whole document, key to answer, from the row's first token
        passkeys += 1
        assert row[0] == TOKENIZER.bos_id and set(segments[segments > 0]) == {1} and PASSKEY.search(text), text
      else:
        assert set(text) <= set("abcdefghijklmnopqrstuvwxyz"), text
  assert passkeys > 20
  # Packed as ordinary documents, most passkey documents straddle two rows.
  loose = [text for batch in take(mixed(VARIED, **kwargs), 30) for text in row_texts(batch)]
  assert sum("pass key" in t and not PASSKEY.search(t) for t in loose) > 10


def test_retrieval_rows_lose_no_real_token():
  """Every document is read whole once an epoch, retrieval documents in rows of their own."""
  documents = documents_read(mixed(VARIED, retrieval_rate=0.4, retrieval_rows=True, shuffle=False, seq_len=256,
                                   num_epochs=1))
  real = [t for t in documents if "pass key" not in t]
  assert len(documents) == len(VARIED) and 0 < len(real) < len(VARIED) and set(real) <= set(VARIED)
  assert all(PASSKEY.search(t) for t in documents if t not in real)


@pytest.mark.parametrize("task", ["passkey", "kv_recall"])
def test_answer_loss_keeps_only_the_answers(task):
  batches = take(mixed(VARIED, task=task, retrieval_rate=0.5, retrieval_rows=True, retrieval_loss="answer",
                       seq_len=256, add_bos=True, shuffle=True), 10)
  checked = 0
  for batch in batches:
    for targets, segments, mask, text in zip(batch["targets"], batch["segment_ids"], batch["loss_mask"],
                                             row_texts(batch)):
      answered = TOKENIZER.decode(targets[mask > 0])
      if "pass key" in text or "Remember:" in text:
        checked += 1
        if task == "passkey":
          key = PASSKEY.search(text).group(1)
          assert answered == f"{key} {key}.", (answered, text[-40:])  # its second mention, and the answer
        else:
          recalled = [v for line in re.findall(r"Recall: (.*)\n", text) for v in re.findall(r"=(\d\d)", line)]
          assert answered == "".join(recalled) and len(recalled) >= 4, (answered, text)
      else:
        assert mask.sum() >= (segments > 0).sum() - 1  # real documents keep their loss (bar a target in padding)
  assert checked > 10


def test_answer_weight_scales_the_answers_only():
  kwargs = dict(retrieval_rate=0.5, retrieval_rows=True, retrieval_loss="answer", seq_len=256, add_bos=True)
  plain, weighted = (take(mixed(VARIED, retrieval_answer_weight=w, **kwargs), 6) for w in (1.0, 5.0))
  for a, b in zip(plain, weighted):
    np.testing.assert_array_equal(a["targets"], b["targets"])
    np.testing.assert_array_equal(b["loss_mask"], np.where(a["loss_mask"] * [[float("pass key" in t)] for t in
                                                                              row_texts(a)] > 0, 5.0, a["loss_mask"]))
  assert any((b["loss_mask"] == 5.0).any() for b in weighted)
