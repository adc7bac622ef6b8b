"""The KV-compression comparison's loss-by-position reader (`longjax.real_model.kv_compression.chunked_losses`):
text read in chunks into a full cache gives each token the loss of one whole-sequence forward, a policy whose
budget holds the whole text gives the same, and a budget smaller than the text changes only the later chunks.
The module imports beside another main (`longjax.demo`, which defines --workdir too) without a flag clash."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import longjax.demo  # noqa: F401  (defines absl flags at import, as the mains do)
from longjax.config import ConfigError
from longjax.inference import kv_policies
from longjax.real_model import kv_compression
from test_decode import model_and_params, tokens_for

LENGTH, CHUNK = 40, 16  # next-token losses of 41 tokens, read in chunks of 16, 16 and 8


def _whole_sequence_losses(model, params, tokens: np.ndarray) -> np.ndarray:
  logits = model.apply({"params": params}, jnp.asarray(tokens[None, :-1]))
  logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))[0]
  return -np.take_along_axis(logp, tokens[1:, None], axis=-1)[:, 0]


@pytest.mark.parametrize("policy", ["h2o", "streaming"])
def test_chunked_losses_equal_one_forward_and_a_tight_budget_changes_the_later_chunks(policy):
  model, params = model_and_params(layers=2)
  tokens = np.asarray(tokens_for(1, LENGTH + 1)[0])
  want = _whole_sequence_losses(model, params, tokens)
  full = kv_compression.chunked_losses(model, params, tokens, kv_policies.make_policy("full"), chunk=CHUNK)
  assert full.shape == (LENGTH,)
  np.testing.assert_allclose(full, want, atol=2e-5)
  roomy = kv_compression.chunked_losses(model, params, tokens, kv_policies.make_policy(policy, LENGTH, LENGTH),
                                        chunk=CHUNK)
  np.testing.assert_allclose(roomy, want, atol=2e-5)
  tight = kv_compression.chunked_losses(model, params, tokens, kv_policies.make_policy(policy, 20, LENGTH),
                                        chunk=CHUNK)
  np.testing.assert_allclose(tight[:CHUNK], want[:CHUNK], atol=2e-5)  # the first chunk sees only itself
  assert np.abs(tight[CHUNK:] - want[CHUNK:]).max() > 1e-3  # later chunks see 20 kept tokens, not all before


def test_importing_defines_no_flags_and_bad_values_are_one_line():
  from absl import flags  # pylint: disable=import-outside-toplevel
  assert "loss_length" not in flags.FLAGS and "report_only" not in flags.FLAGS
  assert kv_compression._ints("fractions", ["4", "8"], kv_compression.FRACTIONS) == (4, 8)
  with pytest.raises(ConfigError, match=r"^--fractions=3 is invalid: allowed one or more of 2, 4, 8$"):
    kv_compression._ints("fractions", ["3"], kv_compression.FRACTIONS)
  with pytest.raises(ConfigError, match=r"^--lengths=4k is invalid: allowed positive whole numbers$"):
    kv_compression._ints("lengths", ["4k"])
  with pytest.raises(ConfigError, match=r"^--tasks=loss,mmlu is invalid: allowed one or more of loss, passkey, ruler$"):
    kv_compression._names("tasks", ["loss", "mmlu"], kv_compression.TASK_ORDER)
