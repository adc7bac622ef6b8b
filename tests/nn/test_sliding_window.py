"""What `window = W` and `sinks = S` mean: query t sees keys t - W < j <= t, plus keys j < S (StreamingLLM)."""

import jax
import numpy as np
import pytest

from repo_configs import load_config
from longjax import ops
from longjax.config import from_config_dict
from longjax.nn import Llama, init_params

WINDOW, SINKS, LENGTH = 5, 2, 20


def _visible(length: int, window: int, sinks: int) -> np.ndarray:
  """bool[t, j]: the keys that query t may see, written out from the definition."""
  t, j = np.arange(length)[:, None], np.arange(length)[None, :]
  return (j <= t) & ((t - window < j) | (j < sinks))


@pytest.mark.parametrize("length,window,sinks", [(20, 5, 2), (20, 1, 0), (20, 3, 6), (9, 12, 1), (33, 8, 4)])
def test_mask_rows_count_the_window_plus_the_sinks_before_it(length, window, sinks):
  mask = np.asarray(ops.attention_mask(length, length, causal=True, window=window, sinks=sinks))[0, 0]
  t = np.arange(length)
  sinks_outside_window = np.clip(np.minimum(sinks, t - window + 1), 0, None)
  np.testing.assert_array_equal(mask.sum(axis=1), np.minimum(window, t + 1) + sinks_outside_window)
  np.testing.assert_array_equal(mask, _visible(length, window, sinks))


@pytest.mark.parametrize("impl", ["xla", "blockwise"])
def test_one_sliding_layer_sees_exactly_the_last_window_tokens_and_the_sinks(impl):
  """In a one-layer model the logits at t change when token t - W + 1 (or a sink) changes, never when
  token t - W or any earlier non-sink token does: perturb each token in turn and see which outputs move."""
  config = load_config("tiny.py:attention=sliding")
  config.model.num_layers = 1
  config.model.attention.sliding.window = WINDOW
  config.model.attention.sliding.sinks = SINKS
  config.model.attention.impl = impl
  model_config = from_config_dict(config).model
  params = jax.jit(lambda rng: init_params(model_config, rng))(jax.random.key(0))
  tokens = np.asarray(jax.random.randint(jax.random.key(1), (LENGTH,), 0, model_config.vocab_size))
  perturbed = np.tile(tokens, (LENGTH + 1, 1))  # row 0 as is, row 1 + j with token j changed
  perturbed[1 + np.arange(LENGTH), np.arange(LENGTH)] = (tokens + 1) % model_config.vocab_size
  logits = np.asarray(jax.jit(Llama(model_config).apply)({"params": params}, perturbed))
  moved = np.abs(logits[1:] - logits[:1]).max(axis=-1)  # [perturbed token j, output position t]
  sees = (moved > 0).T  # [t, j]
  np.testing.assert_array_equal(sees, _visible(LENGTH, WINDOW, SINKS))
  t = LENGTH - 1
  assert sees[t, t - WINDOW + 1] and not sees[t, t - WINDOW]
