"""Token-level cross-entropy, the one loss that training and evaluation share, plain or fused with the LM head."""

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


def chunked_cross_entropy(hidden: jax.Array, kernel: jax.Array, targets: jax.Array, mask: jax.Array, *,
                          chunk: int) -> tuple[jax.Array, jax.Array]:
  """hidden [B, T, E], LM head kernel [E, V] -> `cross_entropy(hidden @ kernel, targets, mask)`, without ever
  holding more than [B, chunk, V] logits.

  The T positions are split into ceil(T / chunk) chunks and a scan computes each chunk's logits and loss;
  its body is rematerialized, so the backward pass recomputes one chunk's logits at a time instead of
  keeping all of them (the fused LM head + loss of Wijmans et al. 2024, "Cut Your Losses", at chunk
  granularity). Chunk c holds positions c, c + n, c + 2n, ... (n chunks): every chunk strides the whole
  sequence, so a sequence-sharded T stays evenly spread over its devices. T not a multiple of n is padded
  with masked positions. The matmul runs in `hidden`'s dtype, the softmax in float32, as in the plain path.
  """
  if chunk < 1:
    raise ValueError(f"chunked_cross_entropy: chunk must be >= 1, got {chunk}")
  batch, length, _ = hidden.shape
  num_chunks = -(-length // chunk)
  rows = -(-length // num_chunks)  # positions per chunk, <= chunk
  pad = num_chunks * rows - length
  mask = mask.astype(jnp.float32)

  def split(x):  # [B, T, ...] -> [n, B, rows, ...]: chunk c takes positions r * n + c
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape((batch, rows, num_chunks) + x.shape[2:]), 2, 0)

  @jax.checkpoint
  def chunk_loss(total, chunk_inputs):
    chunk_hidden, chunk_targets, chunk_mask = chunk_inputs
    # Cast inside the body: the kernel's gradient then adds up over chunks in the kernel's dtype (float32),
    # not in a bfloat16 compute dtype.
    logits = jnp.einsum("BTE,EV->BTV", chunk_hidden, kernel.astype(chunk_hidden.dtype)).astype(jnp.float32)
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, chunk_targets)
    return total + jnp.sum(token_loss * chunk_mask), None

  total, _ = jax.lax.scan(chunk_loss, jnp.zeros((), jnp.float32), (split(hidden), split(targets), split(mask)))
  return total, jnp.sum(mask)
