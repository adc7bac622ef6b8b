"""Token-level cross-entropy, the one loss that training and evaluation share."""

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """logits [B, T, V], targets int32[B, T], mask [B, T] (1 scores a token) -> (sum of masked NLL, token count).

  In float32 whatever the logits' dtype. Callers add up both parts over micro-batches or evaluation
  windows before dividing, so that the mean is weighted by token, not by batch.
  """
  token_loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  mask = mask.astype(jnp.float32)
  return jnp.sum(token_loss * mask), jnp.sum(mask)
