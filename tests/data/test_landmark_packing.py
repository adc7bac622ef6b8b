"""Landmark insertion: after every block of ordinary tokens of a document, positions counting landmarks, targets
that are landmarks masked, and a reserved id the tokenizer never makes."""

import numpy as np
import pytest

from longjax.config import ConfigError, DataConfig
from longjax.data import ByteTokenizer, PackedBatches, insert_landmarks, make_batches

TOKENIZER = ByteTokenizer()
BLOCK, LANDMARK = 5, TOKENIZER.vocab_size  # the byte tokenizer's ids end at 258; 259 is reserved


def test_insert_landmarks_after_every_block():
  ids = np.arange(100, 112)
  out = insert_landmarks(ids, BLOCK, LANDMARK)
  expected = [100, 101, 102, 103, 104, LANDMARK, 105, 106, 107, 108, 109, LANDMARK, 110, 111]
  assert out.tolist() == expected
  assert insert_landmarks(ids[:10], BLOCK, LANDMARK).tolist() == expected[:12]  # a full last block is closed
  # Continuing a stream whose next position is 8 (two ordinary tokens of its block are already there).
  assert insert_landmarks([7, 8, 9, 10, 11], BLOCK, LANDMARK, start=8).tolist() == [7, 8, 9, LANDMARK, 10, 11]
  positions = np.arange(len(out))
  assert np.array_equal(out == LANDMARK, positions % (BLOCK + 1) == BLOCK)


def test_packed_rows_carry_landmarks_at_their_positions_and_mask_them_as_targets():
  documents = ["first document " * 3, "second, longer document " * 4, "x"]
  batches = PackedBatches(documents, TOKENIZER, seq_len=16, batch_size=2, seed=0, shuffle=False,
                          landmarks=(BLOCK, LANDMARK))
  rows = [next(batches) for _ in range(4)]
  inputs, targets, positions, segments, mask = (np.concatenate([b[key] for b in rows]) for key in
                                                 ("inputs", "targets", "positions", "segment_ids", "loss_mask"))
  real = segments > 0
  # Every row, including those that start inside a block, has landmarks exactly at the landmark positions.
  assert np.array_equal((inputs == LANDMARK) & real, (positions % (BLOCK + 1) == BLOCK) & real)
  assert (positions[:, 0] % (BLOCK + 1) != 0).any()
  assert np.array_equal(mask == 0, targets == LANDMARK)  # no padding in an endless stream
  assert mask[inputs == LANDMARK].min() == 1  # a landmark keeps its target, the next ordinary token
  # Removing the landmarks gives back the plain stream.
  plain = PackedBatches(documents, TOKENIZER, seq_len=200, batch_size=1, seed=0, shuffle=False, num_epochs=1)
  stream = next(plain)["inputs"][0]
  ordered = np.concatenate(inputs[:2])  # consecutive rows: stream tokens 0..31
  kept = ordered[ordered != LANDMARK]
  assert np.array_equal(kept, stream[:len(kept)])


def test_a_landmark_id_the_tokenizer_makes_is_a_config_error():
  with pytest.raises(ConfigError, match=r"^model.attention.landmark.id=2 is invalid"):
    make_batches(DataConfig(), split="train", seq_len=16, global_batch_size=2, seed=0, landmarks=(BLOCK, 2))
