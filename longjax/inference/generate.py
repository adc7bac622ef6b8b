"""Autoregressive sampling with one compiled step for every length.

The prompt and the tokens to come live in a fixed buffer; each step runs the
model over the buffer and reads the logits at the last filled position, passing
the true length so dynamic positional methods see it. (Causal attention means
the empty tail cannot change those logits.) The inference issue replaces this
with a KV cache; the interface stays.
"""

import functools

import jax
import jax.numpy as jnp

from longjax.nn import Llama


@functools.partial(jax.jit, static_argnames=("model", "steps", "temperature", "top_k"))
def _sample(model: Llama, params, buffer, length, rng, *, steps: int, temperature: float, top_k: int):
  """Fill buffer[:, length:length+steps]; `length` is the shared prompt length (traced)."""

  def body(i, carry):
    buffer, rng = carry
    cur = length + i
    logits = model.apply({"params": params}, buffer, seq_len=cur)
    next_logits = jax.lax.dynamic_index_in_dim(logits, cur - 1, axis=1, keepdims=False)
    if temperature == 0.0:
      token = jnp.argmax(next_logits, axis=-1)
    else:
      rng, key = jax.random.split(rng)
      scaled = next_logits / temperature
      if top_k:
        kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
        scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
      token = jax.random.categorical(key, scaled, axis=-1)
    buffer = jax.lax.dynamic_update_index_in_dim(buffer, token.astype(buffer.dtype)[:, None], cur, axis=1)
    return buffer, rng

  buffer, _ = jax.lax.fori_loop(0, steps, body, (buffer, rng))
  return buffer


def generate(model: Llama, params, prompt_tokens, *, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
             seed: int = 0, pad_id: int = 0):
  """prompt int32[B, P] (all rows length P) -> int32[B, max_new_tokens]; temperature 0 is greedy."""
  prompt = jnp.asarray(prompt_tokens, jnp.int32)
  batch, length = prompt.shape
  buffer = jnp.full((batch, length + max_new_tokens), pad_id, jnp.int32).at[:, :length].set(prompt)
  out = _sample(model, params, buffer, jnp.int32(length), jax.random.key(seed), steps=max_new_tokens,
                temperature=float(temperature), top_k=int(top_k))
  return out[:, length:]
