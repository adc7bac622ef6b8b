"""The KV-compression comparison's loss-by-position reader (`longjax.real_model.kv_compression.chunked_losses`):
text read in chunks into a full cache gives each token the loss of one whole-sequence forward, a policy whose
budget holds the whole text gives the same, and a budget smaller than the text changes only the later chunks."""

import jax
import jax.numpy as jnp
import numpy as np

from longjax.inference import kv_policies
from longjax.real_model.kv_compression import chunked_losses
from test_decode import model_and_params, tokens_for

LENGTH, CHUNK = 40, 16  # next-token losses of 41 tokens, read in chunks of 16, 16 and 8


def _whole_sequence_losses(model, params, tokens: np.ndarray) -> np.ndarray:
  logits = model.apply({"params": params}, jnp.asarray(tokens[None, :-1]))
  logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))[0]
  return -np.take_along_axis(logp, tokens[1:, None], axis=-1)[:, 0]


def test_chunked_losses_equal_one_forward_and_a_tight_budget_changes_the_later_chunks():
  model, params = model_and_params(layers=2)
  tokens = np.asarray(tokens_for(1, LENGTH + 1)[0])
  want = _whole_sequence_losses(model, params, tokens)
  full = chunked_losses(model, params, tokens, kv_policies.make_policy("full"), chunk=CHUNK)
  assert full.shape == (LENGTH,)
  np.testing.assert_allclose(full, want, atol=2e-5)
  roomy = chunked_losses(model, params, tokens, kv_policies.make_policy("h2o", LENGTH, LENGTH), chunk=CHUNK)
  np.testing.assert_allclose(roomy, want, atol=2e-5)
  tight = chunked_losses(model, params, tokens, kv_policies.make_policy("h2o", 20, LENGTH), chunk=CHUNK)
  np.testing.assert_allclose(tight[:CHUNK], want[:CHUNK], atol=2e-5)  # the first chunk sees only itself
  assert np.abs(tight[CHUNK:] - want[CHUNK:]).max() > 1e-3  # later chunks see 20 kept tokens, not all before
