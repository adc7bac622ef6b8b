"""The shared cross-entropy: a masked NLL sum and a token count, in float32."""

import jax
import jax.numpy as jnp
import numpy as np

from longjax.ops import cross_entropy


def test_cross_entropy_is_the_masked_negative_log_likelihood_in_float32():
  logits = jax.random.normal(jax.random.key(0), (2, 5, 11)) * 4
  targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 11)
  mask = jnp.array([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], bool)
  nll = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.asarray(targets)[..., None], -1)[..., 0]
  total, count = cross_entropy(logits.astype(jnp.bfloat16), targets, mask)
  assert total.dtype == count.dtype == jnp.float32 and count == 7
  np.testing.assert_allclose(total, nll[np.asarray(mask)].sum(), rtol=2e-2)  # bfloat16 logits
  np.testing.assert_allclose(cross_entropy(logits, targets, mask.astype(jnp.float32))[0], nll[np.asarray(mask)].sum(),
                             rtol=1e-5)
