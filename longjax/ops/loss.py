"""Token-level cross-entropy, the one loss that training and evaluation share, plain or fused with the LM head."""

import jax
import jax.numpy as jnp
import optax

from longjax.ops.matmul import dense


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
  num_chunks = -(-hidden.shape[1] // chunk)
  mask = mask.astype(jnp.float32)

  @jax.checkpoint
  def chunk_loss(total, chunk_inputs):
    chunk_hidden, chunk_targets, chunk_mask = chunk_inputs
    return total + jnp.sum(_token_nll(chunk_hidden, kernel, chunk_targets) * chunk_mask), None

  split = lambda x: _strided_chunks(x, num_chunks)  # noqa: E731
  total, _ = jax.lax.scan(chunk_loss, jnp.zeros((), jnp.float32), (split(hidden), split(targets), split(mask)))
  return total, jnp.sum(mask)


def chunked_token_nll(hidden: jax.Array, kernel: jax.Array, targets: jax.Array, *, chunk: int) -> jax.Array:
  """float32[B, T]: each position's negative log-likelihood of its target under hidden [B, T, E] @ kernel [E, V],
  with at most [B, chunk, V] logits alive at once (the per-token losses evaluation needs; same chunking as
  `chunked_cross_entropy`, no custom gradient)."""
  if chunk < 1:
    raise ValueError(f"chunked_token_nll: chunk must be >= 1, got {chunk}")
  batch, length = targets.shape
  num_chunks = -(-length // chunk)
  losses = jax.lax.map(lambda xs: _token_nll(xs[0], kernel, xs[1]),
                       (_strided_chunks(hidden, num_chunks), _strided_chunks(targets, num_chunks)))
  return jnp.moveaxis(losses, 0, 2).reshape(batch, -1)[:, :length]  # [n, B, rows] -> position r * n + c


def _token_nll(hidden, kernel, targets):
  """float32 NLL of each target: the matmul in hidden's dtype, the softmax in float32 (as the plain path)."""
  # Cast inside: under a scan, the kernel's gradient then adds up over chunks in the kernel's dtype (float32),
  # not in a bfloat16 compute dtype.
  logits = dense(hidden, kernel.astype(hidden.dtype)).astype(jnp.float32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def _strided_chunks(x: jax.Array, num_chunks: int) -> jax.Array:
  """[B, T, ...] -> [n, B, ceil(T / n), ...]: chunk c holds positions c, c + n, c + 2n, ... (zero-padded)."""
  batch, length = x.shape[:2]
  rows = -(-length // num_chunks)
  x = jnp.pad(x, [(0, 0), (0, num_chunks * rows - length)] + [(0, 0)] * (x.ndim - 2))
  return jnp.moveaxis(x.reshape((batch, rows, num_chunks) + x.shape[2:]), 2, 0)
