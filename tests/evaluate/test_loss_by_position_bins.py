"""loss_by_position's bins and batching: the default 16 bins, fewer positions than bins, a last batch padded
with copies that do not count, and the error when no document is long enough."""

import jax
import numpy as np
import pytest

from longjax.config import ModelConfig
from longjax.evaluate import loss_by_position
from longjax.nn import Llama, init_params

CONFIG = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=2)
MODEL = Llama(CONFIG)
PARAMS = init_params(CONFIG, jax.random.key(3))


def _documents(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, CONFIG.vocab_size, n).astype(np.int32) for n in lengths]


def _direct(documents, length):
  """Mean loss at each position 1..length over the documents' first length + 1 tokens."""
  rows = np.stack([d[:length + 1] for d in documents])
  logp = np.asarray(jax.jit(lambda x: jax.nn.log_softmax(MODEL.apply({"params": PARAMS}, x)))(rows[:, :-1]))
  return -np.take_along_axis(logp, rows[:, 1:, None], -1)[..., 0].mean(0)


def test_default_is_16_bins():
  documents = _documents([33, 40, 50])
  curve = loss_by_position(MODEL, PARAMS, documents, 32)
  assert curve.starts == list(range(1, 33, 2)) and curve.ends == list(range(3, 35, 2))
  np.testing.assert_allclose(curve.loss, _direct(documents, 32).reshape(16, 2).mean(1), rtol=1e-5)


def test_fewer_positions_than_bins_gives_one_bin_a_position():
  documents = _documents([6, 9])
  curve = loss_by_position(MODEL, PARAMS, documents, 5, num_bins=16)
  assert curve.starts == [1, 2, 3, 4, 5] and curve.ends == [2, 3, 4, 5, 6] and curve.length == 5
  np.testing.assert_allclose(curve.loss, _direct(documents, 5), rtol=1e-5)


def test_a_padded_last_batch_counts_each_document_once():
  """5 documents in batches of 2: the third batch is one document and a copy that must not count."""
  documents = _documents([17, 20, 18, 30, 17], seed=2)
  curve = loss_by_position(MODEL, PARAMS, documents, 16, num_bins=4, batch_size=2)
  assert curve.documents == 5
  np.testing.assert_allclose(curve.loss, _direct(documents, 16).reshape(4, 4).mean(1), rtol=1e-5)
  assert loss_by_position(MODEL, PARAMS, documents, 16, num_bins=4).loss == pytest.approx(curve.loss, rel=1e-5)


def test_no_document_long_enough_is_an_error_naming_the_length():
  with pytest.raises(ValueError, match=r"loss_by_position: no document has 17 tokens"):
    loss_by_position(MODEL, PARAMS, _documents([16, 10]), 16)
