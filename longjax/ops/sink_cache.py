"""StreamingLLM's cache (Xiao et al. 2023, arXiv 2309.17453): the first `sinks` tokens plus a rolling window.

The cache holds sinks + window slots, so memory is constant however many tokens stream through.
Token n (0-based, in write order) goes to slot n while n < sinks, else to slot
sinks + (n - sinks) % window, evicting token n - window. It is the key set of sliding-window
attention with sinks (`reference.attention_mask`): the sinks and keys n - window < j <= n.

Positions are assigned inside the cache, as StreamingLLM does, so a stream runs past the
pre-trained length: a sink keeps position j, and once tokens have been evicted
(offset = n + 1 - window - sinks > 0) every other token moves down by the offset, so the newest
sits at sinks + window - 1. Keys are cached before RoPE and turned at these positions each step.
Until the first eviction every position is the token's own index, so the cache gives exactly the
sliding-window model's full forward pass.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from longjax import positional
from longjax.ops.cached import cached_attention, write_heads, write_rows


class SinkCache(NamedTuple):
  """key [B, Hkv, C, D] and value [B, Hkv, C, Dv] before RoPE (head-major, as `KVCache`); token int32[B, C] (the
  index of the token in each slot, -1 when empty); length int32[B] (tokens seen). C = sinks + window."""

  key: jax.Array
  value: jax.Array
  token: jax.Array
  length: jax.Array


def init_sink_cache(batch: int, kv_heads: int, head_dim: int, *, window: int, sinks: int, dtype,
                    value_dim: int | None = None) -> SinkCache:
  slots = window + sinks
  value_dim = head_dim if value_dim is None else value_dim
  return SinkCache(jnp.zeros((batch, kv_heads, slots, head_dim), dtype),
                   jnp.zeros((batch, kv_heads, slots, value_dim), dtype),
                   jnp.full((batch, slots), -1, jnp.int32), jnp.zeros((batch,), jnp.int32))


def cache_positions(token: jax.Array, length: jax.Array, *, window: int, sinks: int) -> jax.Array:
  """int32[B, C]: the StreamingLLM position of each cached token when `length` int[B] tokens have been seen."""
  offset = jnp.maximum(length - window - sinks, 0)[:, None]
  return jnp.where(token < sinks, token, token - offset)


def _step(state: SinkCache, inputs, *, window: int, sinks: int,
          frequencies_at: Callable[[jax.Array], positional.Frequencies]):
  """One token per row: write it (when valid), then attend over the cache. q [B, H, D], k/v [B, Hkv, D]."""
  q, k, v, valid = inputs
  slots = window + sinks
  n = state.length
  slot = jnp.where(n < sinks, n, sinks + (n - sinks) % window)
  slot = jnp.where(valid, slot, slots)[:, None]  # an invalid (padding) token writes nothing
  key = write_heads(state.key, slot, k[:, None])
  value = write_heads(state.value, slot, v[:, None])
  token = write_rows(state.token, slot, n[:, None])
  length = n + valid.astype(jnp.int32)
  positions = cache_positions(token, length, window=window, sinks=sinks)
  query_position = (length - 1) - jnp.maximum(length - window - sinks, 0)
  freqs = frequencies_at(jnp.minimum(length, slots))
  q_rot = positional.apply_rope(q[:, None], query_position[:, None], freqs)
  k_rot = jnp.swapaxes(positional.apply_rope(jnp.swapaxes(key, 1, 2), jnp.maximum(positions, 0), freqs), 1, 2)
  # Slots fill in order until the cache is full: filled slots are [0, min(length, C)).
  out = cached_attention(q_rot, k_rot, value, q_offsets=jnp.full_like(n, slots - 1),
                         kv_lengths=jnp.minimum(length, slots), key_block=slots)
  return SinkCache(key, value, token, length), out[:, 0]


def sink_cache_attention(q, k, v, state: SinkCache, valid, *, window: int, sinks: int,
                         frequencies_at: Callable[[jax.Array], positional.Frequencies]):
  """q [B, T, H, D], k/v [B, T, Hkv, D] before RoPE, valid bool[B, T] -> (out [B, T, H, Dv], state).

  `frequencies_at(lengths int32[B])`: the rotary frequencies of each row at a sequence length (the model's method,
  `positional.frequencies_per_row`); each step turns q and the cached keys with them at the cache's fill.
  Tokens stream through one at a time (lax.scan), so a long prompt costs T x (sinks + window).
  """
  step = lambda s, x: _step(s, x, window=window, sinks=sinks, frequencies_at=frequencies_at)  # noqa: E731
  state, out = jax.lax.scan(step, state, tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, valid)))
  return jnp.moveaxis(out, 0, 1), state
