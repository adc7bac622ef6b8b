"""Infini-attention (Munkhdalai et al. 2024, arXiv 2404.07143): local attention plus a compressive memory.

The sequence is cut into segments of `segment_len` tokens (the last may be shorter). In each one,
  A_dot = causal softmax attention inside the segment, RoPE at in-segment positions 0..len-1;
  A_mem = σ(Q) M / (σ(Q) z + ε), σ = ELU + 1, read from the memory before this segment (eq. 3);
  then the memory takes the segment (eq. 4 linear, eq. 5 delta):
    linear: M += σ(K)ᵀ V;  delta: M += σ(K)ᵀ (V − σ(K) M / (σ(K) z + ε));  z += Σ_t σ(K_t);
  out = sigmoid(gate) A_mem + (1 − sigmoid(gate)) A_dot per head (eq. 6).
Memory is per key/value head and read by each query head of its group. M, z, σ and the memory
arithmetic are float32 (bf16 memories overflow within a few segments). Segments run under
lax.scan with each step rematerialized, so training memory does not grow with their number;
gradients flow through the memory across segments.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from longjax.ops.attention import attention
from longjax.ops.cached import cached_attention, write_heads
from longjax.ops.reference import attention_mask, naive_attention
from longjax.positional import Frequencies, apply_rope

EPSILON = 1e-6  # the ε of eqs. 3 and 5
UPDATES = ("linear", "delta")


class InfiniState(NamedTuple):
  """The compressive memory of one layer: M float32[B, Hkv, Dk, Dv] and z float32[B, Hkv, Dk]."""

  memory: jax.Array
  normalizer: jax.Array


def _sigma(x):
  """σ = ELU + 1 in float32: positive features for the linear-attention memory."""
  return jax.nn.elu(x.astype(jnp.float32)) + 1.0


def _retrieve(sigma_x, state: InfiniState):
  """σ(X) [B, L, Hkv, G, Dk] -> σ(X) M / (σ(X) z + ε), float32 [B, L, Hkv, G, Dv]."""
  numerator = jnp.einsum("BLKGD,BKDE->BLKGE", sigma_x, state.memory)
  denominator = jnp.einsum("BLKGD,BKD->BLKG", sigma_x, state.normalizer) + EPSILON
  return numerator / denominator[..., None]


def _update(state: InfiniState, sigma_k, v, rule: str) -> InfiniState:
  """Write one segment: σ(K) [B, L, Hkv, Dk] (zero on padding), v float32 [B, L, Hkv, Dv]."""
  if rule == "delta":
    v = v - _retrieve(sigma_k[:, :, :, None], state)[:, :, :, 0]
  memory = state.memory + jnp.einsum("BLKD,BLKE->BKDE", sigma_k, v)
  return InfiniState(memory, state.normalizer + sigma_k.sum(axis=1))


def _local_attention(q, k, v, freqs: Frequencies | None, impl: str):
  """Causal attention inside one segment, RoPE at positions 0..L-1."""
  if freqs is not None:
    positions = jnp.broadcast_to(jnp.arange(q.shape[1]), q.shape[:2])
    q, k = apply_rope(q, positions, freqs), apply_rope(k, positions, freqs)
  if v.shape[-1] != k.shape[-1]:  # the fused kernels want one head_dim for keys and values
    return naive_attention(q, k, v, attention_mask(q.shape[1], k.shape[1], causal=True))
  return attention(q, k, v, causal=True, impl=impl)


def infini_attention(q, k, v, gate, *, segment_len: int, update: str = "linear", state=None,
                     freqs: Frequencies | None = None, impl: str = "auto"):
  """q [B, T, H, Dk], k [B, T, Hkv, Dk], v [B, T, Hkv, Dv] (pre-RoPE), gate [H] logits -> (out [B, T, H, Dv], state).

  state: (M float32[B, Hkv, Dk, Dv], z float32[B, Hkv, Dk]) carried from earlier tokens; zeros when None.
  `impl` picks the local attention kernel (see `attention`).
  """
  if update not in UPDATES:
    raise ValueError(f"infini_attention: update={update!r}; allowed: {', '.join(UPDATES)}")
  if segment_len < 1:
    raise ValueError(f"infini_attention: segment_len must be >= 1, got {segment_len}")
  batch, length, heads, key_dim = q.shape
  kv_heads, value_dim = k.shape[2], v.shape[-1]
  if heads % kv_heads:
    raise ValueError(f"infini_attention: query heads {heads} must be a multiple of key/value heads {kv_heads}")
  group = heads // kv_heads
  if state is None:
    state = (jnp.zeros((batch, kv_heads, key_dim, value_dim), jnp.float32),
             jnp.zeros((batch, kv_heads, key_dim), jnp.float32))
  state = InfiniState(*(jnp.asarray(x, jnp.float32) for x in state))
  mem_weight = jax.nn.sigmoid(gate.astype(jnp.float32)).reshape(kv_heads, group, 1)

  segments = -(-length // segment_len)
  padded = segments * segment_len

  def by_segment(x):  # [B, T, ...] -> [n, B, L, ...], zero-padded to whole segments
    x = jnp.pad(x, [(0, 0), (0, padded - length)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(batch, segments, segment_len, *x.shape[2:]), 1, 0)

  valid = (jnp.arange(padded) < length).reshape(segments, segment_len)

  @jax.checkpoint
  def step(state: InfiniState, inputs):
    q_seg, k_seg, v_seg, valid_seg = inputs
    local = _local_attention(q_seg, k_seg, v_seg, freqs, impl)
    sigma_q = _sigma(q_seg).reshape(batch, segment_len, kv_heads, group, key_dim)
    from_memory = _retrieve(sigma_q, state)
    local = local.astype(jnp.float32).reshape(from_memory.shape)
    out = mem_weight * from_memory + (1.0 - mem_weight) * local
    sigma_k = _sigma(k_seg) * valid_seg[None, :, None, None]  # padding writes nothing
    state = _update(state, sigma_k, v_seg.astype(jnp.float32), update)
    return state, out.reshape(batch, segment_len, heads, value_dim).astype(q.dtype)

  state, out = jax.lax.scan(step, state, (by_segment(q), by_segment(k), by_segment(v), valid))
  out = jnp.moveaxis(out, 0, 1).reshape(batch, padded, heads, value_dim)[:, :length]
  return out, state


class InfiniCache(NamedTuple):
  """Streaming state of one layer: the memory of every closed segment, and the open segment.

  memory float32[B, Hkv, Dk, Dv], normalizer float32[B, Hkv, Dk]; key [B, Hkv, L, Dk] (before RoPE) and
  value [B, Hkv, L, Dv] of the open segment's tokens in slots 0..length % L - 1 (head-major, as `KVCache`);
  length int32[B] tokens seen.
  """

  memory: jax.Array
  normalizer: jax.Array
  key: jax.Array
  value: jax.Array
  length: jax.Array


def init_infini_cache(batch: int, kv_heads: int, key_dim: int, value_dim: int, *, segment_len: int,
                      dtype) -> InfiniCache:
  return InfiniCache(jnp.zeros((batch, kv_heads, key_dim, value_dim), jnp.float32),
                     jnp.zeros((batch, kv_heads, key_dim), jnp.float32),
                     jnp.zeros((batch, kv_heads, segment_len, key_dim), dtype),
                     jnp.zeros((batch, kv_heads, segment_len, value_dim), dtype), jnp.zeros((batch,), jnp.int32))


def _cache_step(state: InfiniCache, inputs, *, gate, update: str, frequencies_at: Callable[[jax.Array], Frequencies]):
  """One token per row, as `infini_attention` treats it in its segment; the memory takes a segment when it closes."""
  q, k, v, valid = inputs  # q [B, H, Dk], k [B, Hkv, Dk], v [B, Hkv, Dv], valid bool[B]
  batch, heads, key_dim = q.shape
  kv_heads, segment_len = state.key.shape[1], state.key.shape[2]
  group = heads // kv_heads
  n = state.length
  slot_in_segment = n % segment_len
  slot = jnp.where(valid, slot_in_segment, segment_len)[:, None]
  key = write_heads(state.key, slot, k[:, None])
  value = write_heads(state.value, slot, v[:, None])
  freqs = frequencies_at(n + 1)
  slots = jnp.broadcast_to(jnp.arange(segment_len), (batch, segment_len))
  q_rot = apply_rope(q[:, None], slot_in_segment[:, None], freqs)
  local = cached_attention(q_rot, key, value, q_offsets=slot_in_segment, kv_lengths=slot_in_segment + 1,
                           key_block=segment_len, key_positions=slots, freqs=freqs)
  memory = InfiniState(state.memory, state.normalizer)
  from_memory = _retrieve(_sigma(q).reshape(batch, 1, kv_heads, group, key_dim), memory)
  mem_weight = jax.nn.sigmoid(gate.astype(jnp.float32)).reshape(kv_heads, group, 1)
  out = mem_weight * from_memory + (1.0 - mem_weight) * local.astype(jnp.float32).reshape(from_memory.shape)
  closes = valid & (slot_in_segment == segment_len - 1)

  def close_segments(memory):  # only on the steps where some row's segment is full
    written = _update(memory, _sigma(jnp.swapaxes(key, 1, 2)), jnp.swapaxes(value, 1, 2).astype(jnp.float32), update)
    return jax.tree.map(lambda new, old: jnp.where(closes.reshape((-1,) + (1,) * (old.ndim - 1)), new, old),
                        written, memory)

  memory = jax.lax.cond(jnp.any(closes), close_segments, lambda memory: memory, memory)
  state = InfiniCache(memory.memory, memory.normalizer, key, value, n + valid.astype(jnp.int32))
  return state, out.reshape(batch, heads, -1).astype(q.dtype)


def infini_cache_attention(q, k, v, gate, state: InfiniCache, valid, *, update: str = "linear",
                           frequencies_at: Callable[[jax.Array], Frequencies]):
  """q [B, T, H, Dk], k [B, T, Hkv, Dk], v [B, T, Hkv, Dv] before RoPE, valid bool[B, T] -> (out, state).

  Streams tokens one at a time through the cache (lax.scan): the outputs equal those of one
  `infini_attention` call over everything streamed so far, with the frequencies `frequencies_at(lengths int32[B])`
  gives at each token's length (the model's method, `positional.frequencies_per_row`).
  """
  step = lambda s, x: _cache_step(s, x, gate=gate, update=update, frequencies_at=frequencies_at)  # noqa: E731
  state, out = jax.lax.scan(step, state, tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, valid)))
  return jnp.moveaxis(out, 0, 1), state
