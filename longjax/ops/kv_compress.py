"""KV-cache compression: caches that hold a fixed budget of tokens (H2O, SnapKV) or every token quantized (KIVI).

Pure array functions; which one a cache runs, with what budget, is the policy it carries
(`CompressedCache.policy`, an entry of `longjax.inference.kv_policies`). Keys are cached after RoPE at their
own positions, as the papers do, so a kept token keeps its position (a static positional method only).

Evicting caches (`EvictingCache`, C = budget slots per kv head): a call with T new tokens lets its queries
attend over the C kept tokens plus the T new ones (causal by position), then keeps C of those C + T per
(row, kv head) by the policy's rule, so between calls the cache never holds more than C tokens. A decode
step is a call with T = 1; a chunked prefill compresses between chunks (a one-chunk prefill is the papers'
prefill-then-compress). Kept slots are ordered by position, empty slots (position -1) last.

  H2O (Zhang et al. 2023, arXiv 2306.14048, sec. 3-4): each kept token accumulates the attention every
    query gives it (summed over the query heads of its kv head); keep the `recent` newest tokens plus the
    C - recent others with the largest accumulated attention.
  SnapKV (Li et al. 2024, arXiv 2404.14469, Listing 1): the last `window` queries (the observation window,
    kept in the state between calls) vote: their softmax attention over the candidates, summed over the
    window and the kv head's query heads, the window's own keys left out, max-pooled over neighbouring
    tokens (kernel `kernel`, stride 1, padding kernel // 2); keep the window plus the C - window others with
    the largest pooled vote. The paper compresses the prompt once and lets generated tokens grow the cache;
    here the same rule runs whenever the C + T candidates exceed C, so the budget holds at every step.

StreamingLLM's cache (`ops.SinkCache`: the `sinks` first tokens plus a rolling window, positions assigned
inside the cache) takes a decode step as `ops.sink_cache_attention` does, one token at a time. A call with
T > 1 tokens (a prefill chunk) runs `sink_chunk_attention`: the same protocol as the evicting caches, the
chunk's queries seeing the kept tokens plus the chunk's own causally, then the cache keeps the sinks and the
newest `window` tokens. The kept tokens sit at positions 0..kept-1 (sinks first, then the window in order, as
StreamingLLM places them) and the chunk's tokens follow. The state after the call is exactly the one the
one-token path leaves; the outputs are the one-token path's wherever no token before the query has been
evicted (token index < sinks + window); past that, a query in a chunk also sees the tokens evicted earlier in
its own chunk (up to budget + T - 1 keys, where the one-token path sees exactly the budget).

Quantized caches (`QuantCache`, KIVI: Liu et al. 2024, arXiv 2402.02750, sec. 3): asymmetric min-max
quantization to `bits` (8 or 4; two 4-bit codes share a byte), keys per channel over groups of `group`
tokens (the open group stays in full precision until it fills), values per token over its channels. A
value x with group minimum m and scale s = (max - m) / (2^bits - 1) is stored as round((x - m) / s), so
|x - dequantized x| <= s / 2. (KIVI also keeps the newest values in full precision; here values are
quantized as they arrive.)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from longjax import positional
from longjax.ops.cached import cached_attention, write_heads, write_rows
from longjax.ops.sink_cache import SinkCache, cache_positions

_NO_POSITION = jnp.iinfo(jnp.int32).max  # sorts empty slots last


class CompressedCache(flax.struct.PyTreeNode):
  """One layer's compressed cache: `policy` (static, hashable) says which rule `state` follows; the attention
  types call `policy.attend(rope, q, k, v, positions, valid, cache) -> (out, cache)`."""

  policy: Any = flax.struct.field(pytree_node=False)
  state: Any = None

  @property
  def length(self) -> jax.Array:
    """int32[B]: tokens seen (not kept: an evicting cache keeps at most its budget)."""
    return self.state.length


class EvictingCache(NamedTuple):
  """key [B, Hkv, C, D] after RoPE, value [B, Hkv, C, Dv]; position int32[B, Hkv, C] (-1: empty); score
  float32[B, Hkv, C] (H2O's accumulated attention; zeros for SnapKV); obs_query [B, W, H, D] after RoPE and
  obs_position int32[B, W] (-1: empty): SnapKV's observation window (W = 0 for H2O); length int32[B]."""

  key: jax.Array
  value: jax.Array
  position: jax.Array
  score: jax.Array
  obs_query: jax.Array
  obs_position: jax.Array
  length: jax.Array


def init_evicting_cache(batch: int, heads: int, kv_heads: int, head_dim: int, *, budget: int, window: int = 0,
                        dtype) -> EvictingCache:
  return EvictingCache(jnp.zeros((batch, kv_heads, budget, head_dim), dtype),
                       jnp.zeros((batch, kv_heads, budget, head_dim), dtype),
                       jnp.full((batch, kv_heads, budget), -1, jnp.int32),
                       jnp.zeros((batch, kv_heads, budget), jnp.float32),
                       jnp.zeros((batch, window, heads, head_dim), dtype),
                       jnp.full((batch, window), -1, jnp.int32), jnp.zeros((batch,), jnp.int32))


def candidate_attention(q, keys, values, key_position, q_position, q_valid):
  """Softmax attention of q [B, T, H, D] over keys [B, Hkv, N, D] / values [B, Hkv, N, Dv] at key_position
  int32[B, Hkv, N] (-1: empty), causal by position (q_position int32[B, T]) -> (out [B, T, H, Dv] in q's dtype,
  probs float32[B, Hkv, G, T, N]); a query that is not valid or sees no key gives 0 and probabilities 0."""
  batch, q_len, heads, head_dim = q.shape
  kv_heads = keys.shape[1]
  group = heads // kv_heads
  q_heads = q.reshape(batch, q_len, kv_heads, group, head_dim)
  logits = jnp.einsum("BTKGD,BKND->BKGTN", q_heads, keys, preferred_element_type=jnp.float32)
  logits = logits / jnp.sqrt(jnp.float32(head_dim))
  key_position = key_position[:, :, None, None, :]
  mask = (key_position >= 0) & (key_position <= q_position[:, None, None, :, None])
  mask &= q_valid[:, None, None, :, None]
  logits = jnp.where(mask, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  weights = jnp.where(mask, jnp.exp(logits - jnp.where(jnp.isfinite(row_max), row_max, 0.0)), 0.0)
  total = jnp.sum(weights, axis=-1, keepdims=True)
  probs = weights / jnp.where(total > 0, total, 1.0)
  out = jnp.einsum("BKGTN,BKNE->BTKGE", probs, values.astype(jnp.float32))
  return out.reshape(batch, q_len, heads, values.shape[-1]).astype(q.dtype), probs


def _take(x: jax.Array, index: jax.Array) -> jax.Array:
  """x [B, Hkv, N, ...] at index int[B, Hkv, M] along N."""
  index = index.reshape(index.shape + (1,) * (x.ndim - 3))
  return jnp.take_along_axis(x, index, axis=2)


def max_pool(vote: jax.Array, kernel: int) -> jax.Array:
  """vote [..., N] max-pooled over `kernel` neighbours (stride 1, padding kernel // 2: torch's max_pool1d)."""
  pad = kernel // 2
  return jax.lax.reduce_window(vote, -jnp.inf, jax.lax.max, (1,) * (vote.ndim - 1) + (kernel,), (1,) * vote.ndim,
                               [(0, 0)] * (vote.ndim - 1) + [(pad, pad)])


def evicting_attention(q, k, v, positions, valid, state: EvictingCache, *, rule: str, protect: int, kernel: int = 1):
  """q [B, T, H, D], k/v [B, T, Hkv, D] after RoPE at positions int32[B, T]; valid bool[B, T] (padding is neither
  attended nor kept) -> (out [B, T, H, Dv], state). rule "h2o" (protect = recent tokens) or "snapkv" (protect =
  observation window, kernel = pooling kernel)."""
  budget = state.key.shape[2]
  batch, q_len, kv_heads = k.shape[:3]
  new_position = jnp.where(valid, positions, -1)
  key_position = jnp.concatenate(
      [state.position, jnp.broadcast_to(new_position[:, None], (batch, kv_heads, q_len))], axis=2)
  # Candidates in position order, empty slots last (SnapKV pools over neighbours in this order).
  order = jnp.argsort(jnp.where(key_position < 0, _NO_POSITION, key_position), axis=2, stable=True)
  key_position = _take(key_position, order)
  keys = _take(jnp.concatenate([state.key, jnp.swapaxes(k, 1, 2).astype(state.key.dtype)], axis=2), order)
  values = _take(jnp.concatenate([state.value, jnp.swapaxes(v, 1, 2).astype(state.value.dtype)], axis=2), order)
  out, probs = candidate_attention(q, keys, values, key_position, positions, valid)
  length = state.length + jnp.sum(valid, axis=1, dtype=jnp.int32)
  protected = key_position >= (length - protect)[:, None, None]
  obs_query, obs_position = state.obs_query, state.obs_position
  if rule == "h2o":
    score = _take(jnp.concatenate([state.score, jnp.zeros((batch, kv_heads, q_len), jnp.float32)], axis=2), order)
    score = score + jnp.sum(probs, axis=(2, 3))
    priority = score
  elif rule == "snapkv":
    window = obs_query.shape[1]
    all_position = jnp.concatenate([obs_position, new_position], axis=1)
    newest = jax.lax.top_k(all_position, window)[1]  # the last `window` queries (empty ones rank last)
    obs_query = jnp.take_along_axis(jnp.concatenate([obs_query, q.astype(obs_query.dtype)], axis=1),
                                    newest[:, :, None, None], axis=1)
    obs_position = jnp.take_along_axis(all_position, newest, axis=1)
    _, obs_probs = candidate_attention(obs_query, keys, values, key_position, obs_position, obs_position >= 0)
    vote = jnp.where(protected, 0.0, jnp.sum(obs_probs, axis=(2, 3)))  # votes >= 0: a 0 never wins a max
    priority = max_pool(vote, kernel)
    score = jnp.zeros_like(priority)
  else:
    raise ValueError(f"evicting_attention: unknown rule {rule!r}; allowed: h2o, snapkv")
  priority = jnp.where(key_position < 0, -jnp.inf, jnp.where(protected, jnp.inf, priority))
  keep = jnp.sort(jax.lax.top_k(priority, budget)[1], axis=2)  # sorted candidate indices keep position order
  kept_position = _take(key_position, keep)
  # An empty candidate picked only to fill the budget stays empty.
  return out, EvictingCache(_take(keys, keep), _take(values, keep), kept_position, _take(score, keep), obs_query,
                            obs_position, length)


def sink_chunk_attention(q, k, v, state: SinkCache, valid, *, window: int, sinks: int,
                         freqs: positional.Frequencies):
  """q [B, T, H, D], k/v [B, T, Hkv, D] before RoPE, valid bool[B, T] -> (out [B, T, H, Dv], state): StreamingLLM's
  cache read by a whole chunk (see the module docstring). `freqs` are one set of frequencies for every position
  (a static RoPE): under a dynamic one the one-token path, `ops.sink_cache_attention`, turns every key with the
  frequencies of its own step's length, and the caller picks that path."""
  slots = window + sinks
  batch, _, kv_heads = k.shape[:3]
  dtype = state.key.dtype
  filled = jnp.minimum(state.length, slots)
  kept_position = cache_positions(state.token, state.length, window=window, sinks=sinks)  # 0..filled-1; -1 empty
  rank = jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1  # the chunk's valid tokens in order
  new_position = jnp.where(valid, filled[:, None] + rank, -1)
  q_rot = positional.apply_rope(q, jnp.maximum(new_position, 0), freqs)
  new_key = positional.apply_rope(k.astype(dtype), jnp.maximum(new_position, 0), freqs)
  old_key = jnp.swapaxes(positional.apply_rope(jnp.swapaxes(state.key, 1, 2), jnp.maximum(kept_position, 0), freqs),
                         1, 2)
  keys = jnp.concatenate([old_key, jnp.swapaxes(new_key, 1, 2)], axis=2)
  values = jnp.concatenate([state.value, jnp.swapaxes(v, 1, 2).astype(dtype)], axis=2)
  key_position = jnp.concatenate([kept_position, new_position], axis=1)
  key_position = jnp.broadcast_to(key_position[:, None], (batch, kv_heads, key_position.shape[1]))
  out, _ = candidate_attention(q_rot, keys, values, key_position, new_position, valid)
  # The state the one-token path leaves: token n in slot n (a sink) or sinks + (n - sinks) % window, only the
  # sinks and the newest `window` survive (each in its own slot, so no write collides).
  token = state.length[:, None] + rank
  length = state.length + jnp.sum(valid, axis=1, dtype=jnp.int32)
  slot = jnp.where(token < sinks, token, sinks + (token - sinks) % window)
  slot = jnp.where(valid & ((token < sinks) | (token >= length[:, None] - window)), slot, slots)
  return out, SinkCache(write_heads(state.key, slot, k), write_heads(state.value, slot, v),
                        write_rows(state.token, slot, token), length)


# ------------------------------------------------------------------------------------------------ quantized


class QuantCache(NamedTuple):
  """KIVI's cache of S slots (a multiple of `group`), codes uint8 (two 4-bit codes a byte at bits 4):
  key_code [B, Hkv, S, D * bits / 8] with key_scale/key_min float32[B, Hkv, S / group, D] (per channel, per
  group of tokens); key_open [B, Hkv, group, D] the open group's keys, unquantized; value_code
  [B, Hkv, S, Dv * bits / 8] with value_scale/value_min float32[B, Hkv, S] (per token); length int32[B]."""

  key_code: jax.Array
  key_scale: jax.Array
  key_min: jax.Array
  key_open: jax.Array
  value_code: jax.Array
  value_scale: jax.Array
  value_min: jax.Array
  length: jax.Array


def init_quant_cache(batch: int, kv_heads: int, head_dim: int, *, max_length: int, bits: int, group: int,
                     dtype) -> QuantCache:
  slots = -(-max_length // group) * group
  width = head_dim * bits // 8
  return QuantCache(jnp.zeros((batch, kv_heads, slots, width), jnp.uint8),
                    jnp.zeros((batch, kv_heads, slots // group, head_dim), jnp.float32),
                    jnp.zeros((batch, kv_heads, slots // group, head_dim), jnp.float32),
                    jnp.zeros((batch, kv_heads, group, head_dim), dtype),
                    jnp.zeros((batch, kv_heads, slots, width), jnp.uint8),
                    jnp.zeros((batch, kv_heads, slots), jnp.float32), jnp.zeros((batch, kv_heads, slots), jnp.float32),
                    jnp.zeros((batch,), jnp.int32))


def quantize(x: jax.Array, axis: int, bits: int):
  """x -> (codes uint8 of x's shape, scale, minimum float32 with `axis` kept as 1): asymmetric min-max."""
  x = x.astype(jnp.float32)
  low, high = jnp.min(x, axis=axis, keepdims=True), jnp.max(x, axis=axis, keepdims=True)
  scale = (high - low) / (2 ** bits - 1)
  codes = jnp.round((x - low) / jnp.where(scale > 0, scale, 1.0))
  return jnp.clip(codes, 0, 2 ** bits - 1).astype(jnp.uint8), scale, low


def dequantize(codes: jax.Array, scale: jax.Array, low: jax.Array) -> jax.Array:
  return codes.astype(jnp.float32) * scale + low


def pack(codes: jax.Array, bits: int) -> jax.Array:
  """uint8 codes [..., D] -> [..., D * bits / 8] (4 bits: element 2i in the low nibble, 2i + 1 in the high)."""
  if bits == 8:
    return codes
  return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack(packed: jax.Array, bits: int) -> jax.Array:
  if bits == 8:
    return packed
  return jnp.stack([packed & 15, packed >> 4], axis=-1).reshape(packed.shape[:-1] + (2 * packed.shape[-1],))


def quantized_attention(q, k, v, valid, state: QuantCache, *, bits: int, key_block: int):
  """q [B, T, H, D], k/v [B, T, Hkv, D] after RoPE; valid bool[B, T] -> (out [B, T, H, Dv], state).

  The new tokens are written at each row's next slots; queries read keys dequantized per channel (the open
  group and this call's tokens unquantized) and values dequantized per token; then every key group this call
  filled is quantized.
  """
  batch, slots, dtype = q.shape[0], state.key_code.shape[2], state.key_open.dtype
  group = state.key_open.shape[2]
  groups = slots // group
  head_dim = state.key_scale.shape[-1]
  write = state.length[:, None] + jnp.arange(k.shape[1], dtype=jnp.int32)
  write = jnp.where(valid, write, slots)
  length = state.length + jnp.sum(valid, axis=1, dtype=jnp.int32)

  key_codes = unpack(state.key_code, bits).reshape(batch, -1, groups, group, head_dim)
  keys = dequantize(key_codes, state.key_scale[:, :, :, None], state.key_min[:, :, :, None])
  keys = keys.reshape(batch, -1, slots, head_dim).astype(dtype)
  open_start = state.length // group * group
  open_slots = open_start[:, None] + jnp.arange(group, dtype=jnp.int32)
  keys = write_heads(keys, open_slots, jnp.swapaxes(state.key_open, 1, 2))
  keys = write_heads(keys, write, k)

  value_codes, value_scale, value_min = quantize(jnp.swapaxes(v, 1, 2), -1, bits)  # [B, Hkv, T, Dv], [B, Hkv, T, 1]
  value_code = write_heads(state.value_code, write, jnp.swapaxes(pack(value_codes, bits), 1, 2))
  scale_slots = write[:, None, :]
  rows, heads = jnp.arange(batch)[:, None, None], jnp.arange(k.shape[2])[None, :, None]
  value_scale = state.value_scale.at[rows, heads, scale_slots].set(value_scale[..., 0], mode="drop")
  value_min = state.value_min.at[rows, heads, scale_slots].set(value_min[..., 0], mode="drop")
  values = dequantize(unpack(value_code, bits), value_scale[..., None], value_min[..., None]).astype(dtype)

  out = cached_attention(q, keys, values, q_offsets=state.length, kv_lengths=length, key_block=key_block)

  codes, scale, low = quantize(keys.reshape(batch, -1, groups, group, head_dim), 3, bits)
  group_index = jnp.arange(groups)[None, None, :]
  filled = (group_index >= (state.length // group)[:, None, None]) & (group_index < (length // group)[:, None, None])
  old_codes = unpack(state.key_code, bits).reshape(codes.shape)
  key_code = pack(jnp.where(filled[..., None, None], codes, old_codes).reshape(batch, -1, slots, head_dim), bits)
  key_scale = jnp.where(filled[..., None], scale[:, :, :, 0], state.key_scale)
  key_min = jnp.where(filled[..., None], low[:, :, :, 0], state.key_min)
  new_open = (length // group * group)[:, None, None, None] + jnp.arange(group)[None, None, :, None]
  key_open = jnp.take_along_axis(keys, jnp.minimum(new_open, slots - 1), axis=2)
  return out, QuantCache(key_code, key_scale, key_min, key_open, value_code, value_scale, value_min, length)
