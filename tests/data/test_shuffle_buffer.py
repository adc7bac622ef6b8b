"""The shuffle buffer of packed rows: batches mix documents, no row is lost, seeded, and resumes exactly."""

import json
import string

import numpy as np
import pytest

from longjax.config import ConfigError, DataConfig, from_config_dict
from longjax.data import ByteTokenizer, PackedBatches
from repo_configs import load_config

TOKENIZER = ByteTokenizer()
# Document i is one letter repeated, so a row's letters name the documents it came from.
DOCUMENTS = [letter * 120 for letter in string.ascii_letters]


def packed(documents=DOCUMENTS, **kwargs):
  args = dict(seq_len=16, batch_size=4, seed=0, shuffle=False, shuffle_buffer=64)
  return PackedBatches(documents, TOKENIZER, **{**args, **kwargs})


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def documents_in(batch):
  return set(TOKENIZER.decode(batch["inputs"].reshape(-1)))


def assert_batches_equal(got, want):
  assert len(got) == len(want)
  for got_batch, want_batch in zip(got, want):
    for key in want_batch:
      np.testing.assert_array_equal(got_batch[key], want_batch[key], err_msg=key)


def test_shuffled_batches_mix_documents():
  plain = [len(documents_in(batch)) for batch in take(packed(shuffle_buffer=0), 20)]
  mixed = [len(documents_in(batch)) for batch in take(packed(), 20)]
  assert max(plain) <= 2  # Four consecutive rows of 16 tokens are one or two 122-token documents.
  assert min(mixed) >= 3 and np.mean(mixed) > 3.5, mixed


def test_the_buffer_permutes_rows_without_losing_or_repeating_any():
  def sorted_rows(batches):
    rows = np.concatenate([np.concatenate([b["inputs"], b["targets"], b["positions"], b["segment_ids"]], axis=1)
                           for b in batches])
    return rows[np.lexsort(rows.T[::-1])]
  plain, shuffled = list(packed(shuffle_buffer=0, num_epochs=2)), list(packed(num_epochs=2))
  assert len(plain) == len(shuffled)
  np.testing.assert_array_equal(sorted_rows(plain), sorted_rows(shuffled))
  assert not np.array_equal(plain[0]["inputs"], shuffled[0]["inputs"])


def test_deterministic_and_seeded():
  def stream(**kwargs):
    return np.concatenate([b["inputs"] for b in take(packed(**kwargs), 30)])
  np.testing.assert_array_equal(stream(seed=1), stream(seed=1))
  assert not np.array_equal(stream(seed=1), stream(seed=2))
  # Each process shuffles its own rows with its own permutation.
  assert not np.array_equal(stream(process_index=0, process_count=2), stream(process_index=1, process_count=2))


@pytest.mark.parametrize("batches_before", [1, 5, 16, 17, 40])  # 16 batches of 4 rows fill 64 rows exactly
def test_exact_resume_mid_buffer(batches_before):
  kwargs = dict(shuffle=True, seed=3, process_index=1, process_count=2)
  iterator = packed(**kwargs)
  take(iterator, batches_before)
  state = json.loads(json.dumps(iterator.get_state()))
  assert len(json.dumps(state)) < 400
  expected = take(iterator, 20)  # across the next refill
  restored = packed(**kwargs)
  restored.set_state(state)
  assert_batches_equal(take(restored, 20), expected)
  assert restored.get_state() == iterator.get_state()


def test_resume_with_a_new_batch_size_continues_the_rows():
  iterator = packed(batch_size=4)
  take(iterator, 3)
  state = iterator.get_state()
  expected = np.concatenate([b["inputs"] for b in take(iterator, 3)])
  restored = packed(batch_size=6)
  restored.set_state(state)
  np.testing.assert_array_equal(np.concatenate([b["inputs"] for b in take(restored, 2)]), expected)


def test_resume_mid_buffer_with_another_buffer_size_or_none_is_refused():
  iterator = packed()
  take(iterator, 2)
  state = iterator.get_state()
  with pytest.raises(ConfigError, match=r"^data\.shuffle_buffer=32 is invalid"):
    restored = packed(shuffle_buffer=32)
    restored.set_state(state)
    next(restored)
  with pytest.raises(ConfigError, match=r"^data\.shuffle_buffer=0 is invalid"):
    packed(shuffle_buffer=0).set_state(state)


def test_a_state_saved_without_a_buffer_starts_a_fresh_buffer_there():
  iterator = packed(shuffle_buffer=0)
  take(iterator, 3)
  old_format = {k: v for k, v in iterator.get_state().items() if not k.startswith("buffer_")}
  restored = packed()
  restored.set_state(old_format)
  unshuffled = np.concatenate([b["inputs"] for b in take(iterator, 16)])
  reshuffled = np.concatenate([b["inputs"] for b in take(restored, 16)])
  assert sorted(map(bytes, unshuffled)) == sorted(map(bytes, reshuffled))


def test_the_default_and_the_trainer_configs_shuffle_rows():
  assert DataConfig().shuffle_buffer == 256
  assert from_config_dict(load_config("base.py")).data.shuffle_buffer == 256
  assert from_config_dict(load_config("tiny.py")).data.shuffle_buffer > 0


def test_invalid_keys_are_refused_in_one_line():
  cases = {"shuffle_buffer": -1, "retrieval_rate": 1.5, "retrieval_task": "needle", "retrieval_digits": 0,
           "retrieval_pairs": 0, "retrieval_queries": 9, "retrieval_rows": 1, "retrieval_loss": "answers",
           "retrieval_answer_weight": 0}
  for key, value in cases.items():
    with pytest.raises(ConfigError) as error:
      DataConfig(**{key: value}).validate()
    message = str(error.value)
    assert message.startswith(f"data.{key}={value!r} is invalid") and "\n" not in message, message
