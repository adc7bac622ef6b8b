"""The prefetching iterator: the same batches in the same order, and a state that resumes at the next one."""

import numpy as np
import pytest

from longjax.data import ByteTokenizer, PackedBatches
from longjax.data.prefetch import Prefetch

DOCUMENTS = [f"document {i}: " + "x" * (7 * i + 3) for i in range(40)]


def _reader():
  return PackedBatches(DOCUMENTS, ByteTokenizer(), seq_len=16, batch_size=2, seed=0, shuffle_buffer=4)


def test_prefetch_yields_the_same_batches():
  plain = _reader()
  expected = [next(plain) for _ in range(12)]
  prefetch = Prefetch(_reader(), depth=3)
  try:
    for want in expected:
      got = next(prefetch)
      for key in want:
        np.testing.assert_array_equal(got[key], want[key])
  finally:
    prefetch.close()


def test_prefetch_state_resumes_at_the_next_batch_not_the_read_ahead_ones():
  prefetch = Prefetch(_reader(), depth=4)
  try:
    for _ in range(5):
      next(prefetch)
    state = prefetch.get_state()
    expected = next(prefetch)
  finally:
    prefetch.close()
  resumed = _reader()
  resumed.set_state(state)
  again = Prefetch(resumed)
  got = next(again)
  again.close()
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key])


def test_prefetch_places_batches_and_raises_the_end_of_the_stream_in_order():
  finite = PackedBatches(DOCUMENTS[:3], ByteTokenizer(), seq_len=16, batch_size=2, seed=0, num_epochs=1)
  count = sum(1 for _ in PackedBatches(DOCUMENTS[:3], ByteTokenizer(), seq_len=16, batch_size=2, seed=0,
                                       num_epochs=1))
  prefetch = Prefetch(finite, place=lambda batch: batch["inputs"].sum(), depth=2)
  got = list(prefetch)
  assert len(got) == count and all(isinstance(x, np.integer) for x in got)
  with pytest.raises(StopIteration):
    next(prefetch)
  prefetch.close()
