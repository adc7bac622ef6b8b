"""PackedBatches: stream order, segment ids, positions, loss mask, determinism, resume and process shards."""

import dataclasses
import functools
import json

import numpy as np
import pytest

from longjax.config import ConfigError
from longjax.data import ByteTokenizer, PackedBatches, make_batches

TOKENIZER = ByteTokenizer()
# Lengths from 1 byte to several rows, so documents both share rows and cross them.
DOCUMENTS = [f"doc{i}:" + "abcdefghij"[i % 10] * (i * 7 % 60) for i in range(23)]


def packed(documents=DOCUMENTS, **kwargs):
  args = dict(seq_len=16, batch_size=3, seed=0, shuffle=False, add_bos=True, add_eos=True)
  return PackedBatches(documents, TOKENIZER, **{**args, **kwargs})


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def expected_stream(documents, **kwargs):
  """Token ids, document ordinals and in-document positions of the documents read in order."""
  tokens, ordinals, positions = [], [], []
  for ordinal, text in enumerate(documents):
    ids = TOKENIZER.encode(text, **kwargs)
    tokens += ids
    ordinals += [ordinal] * len(ids)
    positions += range(len(ids))
  return np.array(tokens), np.array(ordinals), np.array(positions)


def rows(batches, key):
  return np.concatenate([batch[key] for batch in batches])


def test_one_epoch_is_the_document_stream_in_order():
  batches = list(packed(num_epochs=1))
  tokens, ordinals, positions = expected_stream(DOCUMENTS, bos=True, eos=True)
  for batch in batches:
    assert {k: (v.dtype, v.shape) for k, v in batch.items()} == {
        "inputs": (np.int32, (3, 16)), "targets": (np.int32, (3, 16)), "segment_ids": (np.int32, (3, 16)),
        "positions": (np.int32, (3, 16)), "loss_mask": (np.float32, (3, 16))}
  inputs, targets, mask = rows(batches, "inputs"), rows(batches, "targets"), rows(batches, "loss_mask")
  real = mask.reshape(-1) > 0
  # Row k holds stream tokens [16k, 16k + 17): the inputs tile the stream, each later token is a target once.
  np.testing.assert_array_equal(targets.reshape(-1)[real], tokens[1:])
  np.testing.assert_array_equal(inputs.reshape(-1)[:len(tokens)], tokens)
  np.testing.assert_array_equal(rows(batches, "positions").reshape(-1)[:len(tokens)], positions)
  # Segments count the documents of each row from 1, in input terms.
  segments = rows(batches, "segment_ids")
  for row in range(len(segments)):
    row_ordinals = ordinals[16 * row:16 * row + 16]
    expected = 1 + np.concatenate([[0], np.cumsum(np.diff(row_ordinals) != 0)])
    np.testing.assert_array_equal(segments[row, :len(row_ordinals)], expected)


def test_padding_only_after_the_last_epoch_and_masked():
  batches = list(packed(num_epochs=2))
  inputs, targets = rows(batches, "inputs"), rows(batches, "targets")
  segments, mask, positions = rows(batches, "segment_ids"), rows(batches, "loss_mask"), rows(batches, "positions")
  # The byte tokenizer's pad id 0 is never a real token, so padding is exactly the zeros.
  np.testing.assert_array_equal(mask, (targets != TOKENIZER.pad_id).astype(np.float32))
  np.testing.assert_array_equal(segments == 0, inputs == TOKENIZER.pad_id)
  assert np.all(positions[segments == 0] == 0)
  assert 0 < (mask == 0).sum() < 16 + 3 * 16  # some padding: the tail of the last row and its batch
  tokens, _, _ = expected_stream(DOCUMENTS, bos=True, eos=True)
  assert int(mask.sum()) == 2 * len(tokens) - 1  # two epochs, all but the first token predicted
  assert np.all(rows(take(packed(), 40), "loss_mask") == 1)  # an endless stream never pads


def test_long_documents_continue_across_rows_with_counting_positions():
  documents = ["x" * 100, "y" * 5]
  batch = next(packed(documents, batch_size=8, add_bos=False, add_eos=False))
  np.testing.assert_array_equal(batch["positions"][:6].reshape(-1), np.arange(96))
  np.testing.assert_array_equal(batch["segment_ids"][:6], 1)
  # Row 6 ends "x", then "y" * 5, then the next epoch's "x" document starts again.
  np.testing.assert_array_equal(batch["positions"][6], [*range(96, 100), *range(5), *range(7)])
  np.testing.assert_array_equal(batch["segment_ids"][6], [1] * 4 + [2] * 5 + [3] * 7)


def test_shuffled_epochs_read_every_document_once_in_a_new_order():
  documents = [f"<{i}>" for i in range(30)]
  batches = list(packed(documents, shuffle=True, num_epochs=3, seed=5))
  text = TOKENIZER.decode(rows(batches, "inputs").reshape(-1)[rows(batches, "segment_ids").reshape(-1) > 0])
  text += TOKENIZER.decode(rows(batches, "targets")[-1])[-1:]  # the last token is only a target
  orders = [text[i * len(text) // 3:(i + 1) * len(text) // 3] for i in range(3)]
  for order in orders:
    assert sorted(order.split(">")[:-1]) == sorted(d[:-1] for d in documents)
  assert len(set(orders)) == 3 and orders[0] != "".join(documents)


def test_deterministic_and_seeded():
  def stream(seed):
    return rows(take(packed(shuffle=True, seed=seed), 6), "inputs")
  np.testing.assert_array_equal(stream(1), stream(1))
  assert not np.array_equal(stream(1), stream(2))


@pytest.mark.parametrize("shuffle", [False, True])
def test_exact_resume(shuffle):
  iterator = packed(shuffle=shuffle, seed=3, process_index=1, process_count=2)
  take(iterator, 3)
  state = json.loads(json.dumps(iterator.get_state()))
  assert len(json.dumps(state)) < 400
  expected = take(iterator, 3)
  restored = packed(shuffle=shuffle, seed=3, process_index=1, process_count=2)
  restored.set_state(state)
  for got, want in zip(take(restored, 3), expected):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_resume_with_a_new_batch_size_continues_the_stream():
  iterator = packed(seq_len=16, batch_size=3)
  take(iterator, 2)
  state = iterator.get_state()
  expected = rows(take(iterator, 2), "inputs")
  restored = packed(seq_len=16, batch_size=2)
  restored.set_state(state)
  np.testing.assert_array_equal(rows(take(restored, 3), "inputs"), expected)


def test_state_from_another_topology_is_refused():
  state = packed(process_index=0, process_count=2).get_state()
  with pytest.raises(ConfigError, match="stream count"):
    packed(process_index=0, process_count=4).set_state(state)


def test_process_shards_are_disjoint_and_cover_the_documents():
  documents = [f"<{i}>" for i in range(31)]
  shares = []
  for index in range(3):
    batches = list(packed(documents, shuffle=True, seed=9, num_epochs=1, process_index=index, process_count=3,
                          add_bos=False, add_eos=False))
    text = TOKENIZER.decode(rows(batches, "inputs").reshape(-1)) + TOKENIZER.decode(rows(batches, "targets")[-1])[-1:]
    shares.append(set(text.rstrip(">").split(">")))
    assert len(shares[-1]) in (10, 11)
  assert set.union(*shares) == {d[:-1] for d in documents}
  assert sum(map(len, shares)) == len(documents)


def test_make_batches_over_a_text_dir(corpus_config):
  config = dataclasses.replace(corpus_config, shuffle=False, shuffle_buffer=0)
  every = make_batches(config, split="train", seq_len=32, global_batch_size=4, seed=0)
  assert every.streams == 4 and every.rows == [0, 1, 2, 3]
  batch = next(every)
  assert batch["inputs"].shape == (4, 32) and (batch["inputs"][:, 0] == TOKENIZER.bos_id).all()
  assert len({row.tobytes() for row in batch["inputs"]}) == 4  # each row a stream of its own documents


def test_any_subset_of_rows_is_a_slice_of_the_global_batch(corpus_config):
  """What a host packs (the rows its devices hold) is that slice of the one global batch, and a state gathered
  from any split of the rows resumes any other split: the batch depends on (dataset, seed, step) only."""
  config = dataclasses.replace(corpus_config, shuffle_buffer=4)
  make = functools.partial(make_batches, config, split="train", seq_len=16, global_batch_size=6, seed=3)
  every = make()
  expected = take(every, 6)
  halves = [make(rows=[0, 1, 2]), make(rows=[5, 4, 3])]
  assert every.streams == 6 and halves[1].rows == [3, 4, 5]
  firsts = [take(half, 3) for half in halves]
  for step in range(3):
    for key in expected[step]:
      np.testing.assert_array_equal(np.concatenate([firsts[0][step][key], firsts[1][step][key]]), expected[step][key])
  state = {"num_streams": 6, "streams": {str(k): v for half in halves for k, v in half.get_state()["streams"].items()}}
  state = json.loads(json.dumps(state))
  thirds = [make(rows=[0, 1]), make(rows=[2, 3]), make(rows=[4, 5])]
  for third in thirds:
    third.set_state(state)
  rest = [take(third, 3) for third in thirds]
  for step in range(3):
    for key in expected[step]:
      np.testing.assert_array_equal(np.concatenate([part[step][key] for part in rest]), expected[3 + step][key])
  with pytest.raises(ConfigError, match="streams=7 does not match"):
    make().set_state({**state, "num_streams": 7})


def test_streams_divide_the_batch_when_documents_are_few(corpus_config):
  from longjax.data.global_batches import num_streams
  assert (num_streams(8, 100), num_streams(8, 5), num_streams(6, 5), num_streams(7, 3)) == (8, 4, 3, 1)
  config = dataclasses.replace(corpus_config, shuffle_buffer=0)
  few = make_batches(config, split="validation", seq_len=32, global_batch_size=64, seed=0)
  assert few.streams < 64 and next(few)["inputs"].shape == (64, 32)


def test_unusable_document_lists_are_refused():
  with pytest.raises(ValueError, match="no document"):
    next(packed(["", ""], add_bos=False, add_eos=False))
  with pytest.raises(ValueError, match="cannot be shared"):
    packed(["a", "b"], process_index=0, process_count=3)
