"""Loss by position: flat at log(vocab) for a uniform model, and equal to a direct computation."""

import math

import jax
import numpy as np

from longjax.config import ModelConfig
from longjax.evaluate import loss_by_position
from longjax.nn import Llama, init_params

CONFIG = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=2)


def _documents(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, CONFIG.vocab_size, n).astype(np.int32) for n in lengths]


def test_a_uniform_model_is_flat_at_log_vocab():
  params = jax.tree.map(np.zeros_like, init_params(CONFIG, jax.random.key(0)))
  curve = loss_by_position(Llama(CONFIG), params, _documents([70, 65, 90, 20]), 64, num_bins=8, batch_size=2)
  assert curve.documents == 3  # the 20-token document is too short
  assert curve.starts == list(range(1, 64, 8)) and curve.ends == list(range(9, 66, 8))
  np.testing.assert_allclose(curve.loss, math.log(CONFIG.vocab_size), rtol=1e-6)


def test_bins_average_the_per_position_losses():
  params = init_params(CONFIG, jax.random.key(1))
  documents = _documents([33, 40])
  curve = loss_by_position(Llama(CONFIG), params, documents, 32, num_bins=4)
  rows = np.stack([d[:33] for d in documents])
  logp = np.asarray(jax.nn.log_softmax(Llama(CONFIG).apply({"params": params}, rows[:, :-1])))
  losses = -np.take_along_axis(logp, rows[:, 1:, None], -1)[..., 0].mean(0)
  np.testing.assert_allclose(curve.loss, losses.reshape(4, 8).mean(1), rtol=1e-5)
