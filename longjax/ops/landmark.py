"""Landmark attention (Mohtashami & Jaggi 2023, arXiv 2305.16300; epfml/landmark-attention).

A landmark token closes every block of ordinary tokens. A token's block is the number of landmarks strictly
before it. A query attends directly to the ordinary tokens of its own block up to itself; ONE softmax over those
scores together with the scores of all earlier landmarks gives each earlier landmark a weight p_l; a token of an
earlier block gets p_l times a softmax over that block's ordinary tokens only (the reference's
`landmark_grouped_softmax`). The query's own landmark is excluded and no landmark's value is ever read.

At inference (`landmark_cache_attention`) the cache keeps every block with its landmark key; each query head
scores the landmarks of all complete blocks before its own, retrieves the top-k blocks, places them (in their
order) at the k block slots just before its own block, and applies the same grouped softmax to them and its own
block. With k at least the number of blocks this is exactly `landmark_attention`. Unlike the reference, every query
retrieves from all earlier blocks, including those completed earlier in the same chunk, so chunked prefill equals
one long call. Softmax statistics are float32.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from longjax.ops.cached import write_heads
from longjax.positional import Frequencies, apply_rope


class LandmarkCache(NamedTuple):
  """Every token so far in slot = position order, landmarks at slots = block - 1 (mod block): key [B, Hkv, S, D]
  before RoPE (retrieved blocks turn at their new positions), value [B, Hkv, S, Dv]; length int32[B]."""

  key: jax.Array
  value: jax.Array
  length: jax.Array


def init_landmark_cache(batch: int, max_length: int, kv_heads: int, head_dim: int, *, block: int,
                        dtype) -> LandmarkCache:
  """An empty cache of max_length rounded up to whole blocks (`block` = landmark_block + 1 slots)."""
  slots = -(-max_length // block) * block
  return LandmarkCache(jnp.zeros((batch, kv_heads, slots, head_dim), dtype),
                       jnp.zeros((batch, kv_heads, slots, head_dim), dtype), jnp.zeros((batch,), jnp.int32))


def is_landmark_position(positions: jax.Array, block: int) -> jax.Array:
  """bool like positions: where packing and generation put landmark tokens (the last slot of every block)."""
  return positions % block == block - 1


def _per_key(reduce, x: jax.Array, groups: jax.Array) -> jax.Array:
  """x [B, K, G, T, S] reduced over keys of one group (groups int32[B, S], non-decreasing), back at each key."""

  def row(x_row, groups_row):
    reduced = reduce(jnp.moveaxis(x_row, -1, 0), groups_row, num_segments=x_row.shape[-1], indices_are_sorted=True)
    return jnp.moveaxis(reduced[groups_row], 0, -1)

  return jax.vmap(row)(x, groups)


def _grouped_chunk(q, k, v, q_index, is_landmark, segment_ids, causal: bool):
  """Queries q [B, Tq, H, D] at key indices q_index int32[Tq] over keys k [B, S, Hkv, D] -> [B, Tq, H, Dv] float32."""
  batch, q_len, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  block_id = jnp.cumsum(is_landmark, axis=1, dtype=jnp.int32) - is_landmark  # landmarks strictly before
  q_block = block_id[:, q_index]
  key_index = jnp.arange(k.shape[1])
  earlier = block_id[:, None, :] < q_block[:, :, None]  # [B, Tq, S]
  own = (block_id[:, None, :] == q_block[:, :, None]) & ~is_landmark[:, None, :]
  if causal:
    own &= key_index[None, None, :] <= q_index[None, :, None]
  if segment_ids is not None:
    same = segment_ids[:, q_index][:, :, None] == segment_ids[:, None, :]
    own, earlier = own & same, earlier & same
  landmark_in = (earlier & is_landmark[:, None, :])[:, None, None]
  inner = (earlier & ~is_landmark[:, None, :])[:, None, None]
  own = own[:, None, None]

  qg = q.reshape(batch, q_len, kv_heads, heads // kv_heads, head_dim)
  scores = jnp.einsum("BTKGD,BSKD->BKGTS", qg, k, preferred_element_type=jnp.float32) / jnp.sqrt(
      jnp.float32(head_dim))
  # One softmax over the own block's ordinary tokens and the earlier landmarks.
  outer = own | landmark_in
  outer_max = jax.lax.stop_gradient(jnp.max(jnp.where(outer, scores, -jnp.inf), axis=-1, keepdims=True))
  outer_max = jnp.where(jnp.isfinite(outer_max), outer_max, 0.0)
  outer_sum = jnp.sum(jnp.where(outer, jnp.exp(scores - outer_max), 0.0), axis=-1, keepdims=True)
  outer_lse = outer_max + jnp.log(jnp.where(outer_sum > 0, outer_sum, 1.0))
  # A softmax inside each earlier block, weighted by its landmark's share of the outer softmax.
  inner_scores = jnp.where(inner, scores, -jnp.inf)
  inner_max = jax.lax.stop_gradient(_per_key(jax.ops.segment_max, inner_scores, block_id))
  inner_max = jnp.where(jnp.isfinite(inner_max), inner_max, 0.0)
  inner_sum = _per_key(jax.ops.segment_sum, jnp.where(inner, jnp.exp(scores - inner_max), 0.0), block_id)
  inner_lse = inner_max + jnp.log(jnp.where(inner_sum > 0, inner_sum, 1.0))
  landmark_score = _per_key(jax.ops.segment_sum, jnp.where(landmark_in, scores, 0.0), block_id)  # its block's
  log_weights = jnp.where(own, scores - outer_lse,
                          jnp.where(inner, landmark_score - outer_lse + scores - inner_lse, -jnp.inf))
  out = jnp.einsum("BKGTS,BSKE->BTKGE", jnp.exp(log_weights).astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return out.reshape(batch, q_len, heads, v.shape[-1])


def landmark_attention(q, k, v, is_landmark, *, causal: bool = True, segment_ids=None, query_block: int | None = None):
  """q [B, T, H, D], k/v [B, T, Hkv, D] already rotated, is_landmark bool[B, T] -> [B, T, H, Dv] (q's dtype).

  Query head h reads key/value head h // (H // Hkv); scores are q.k / sqrt(D). `causal=False` lets a query read
  its whole own block (earlier blocks only through their landmarks, as with causal). `segment_ids` int[B, T] keep
  packed documents apart. `query_block` is the blockwise form: queries in chunks of that many (rematerialized in
  the backward pass), so scores are [query_block, T] at a time instead of [T, T]; the result is the same.
  """
  batch, length, heads, _ = q.shape
  if heads % k.shape[2]:
    raise ValueError(f"landmark_attention: query heads {heads} must be a multiple of key/value heads {k.shape[2]}")
  is_landmark = jnp.asarray(is_landmark, bool)
  if query_block is None or query_block >= length:
    return _grouped_chunk(q, k, v, jnp.arange(length), is_landmark, segment_ids, causal).astype(q.dtype)
  chunks = -(-length // query_block)
  padded = jnp.pad(q, ((0, 0), (0, chunks * query_block - length), (0, 0), (0, 0)))
  padded = jnp.moveaxis(padded.reshape(batch, chunks, query_block, *q.shape[2:]), 1, 0)
  starts = jnp.arange(chunks) * query_block

  @jax.checkpoint
  def chunk(args):
    q_chunk, start = args
    q_index = jnp.minimum(start + jnp.arange(query_block), length - 1)  # padded queries repeat the last one
    return _grouped_chunk(q_chunk, k, v, q_index, is_landmark, segment_ids, causal)

  out = jax.lax.map(chunk, (padded, starts))
  out = jnp.moveaxis(out, 0, 1).reshape(batch, chunks * query_block, heads, v.shape[-1])[:, :length]
  return out.astype(q.dtype)


def _rotate(x: jax.Array, positions: jax.Array, freqs: Frequencies) -> jax.Array:
  """x [B, ..., D] at positions int[B, ...] (the same leading shape) turned by RoPE."""
  flat = apply_rope(x.reshape(x.shape[0], -1, 1, x.shape[-1]), positions.reshape(positions.shape[0], -1), freqs)
  return flat.reshape(x.shape)


def landmark_cache_attention(q, k, v, state: LandmarkCache, valid, *, block: int, topk: int, freqs: Frequencies):
  """New tokens q [B, T, H, D], k/v [B, T, Hkv, D] before RoPE, at positions = each row's next slots, valid
  bool[B, T] (padding is neither cached nor counted) -> (out [B, T, H, Dv], state); top-k block retrieval per head."""
  batch, q_len, heads, head_dim = q.shape
  kv_heads, slots_total = state.key.shape[1], state.key.shape[2]
  group, num_blocks = heads // kv_heads, slots_total // block
  slots = state.length[:, None] + jnp.arange(q_len, dtype=jnp.int32)  # each query's slot is its position
  key = write_heads(state.key, jnp.where(valid, slots, slots_total), k)
  value = write_heads(state.value, jnp.where(valid, slots, slots_total), v)
  length = state.length + jnp.sum(valid, axis=1, dtype=jnp.int32)
  scale = 1.0 / jnp.sqrt(jnp.float32(head_dim))
  own_block = slots // block
  qg = apply_rope(q, slots, freqs).reshape(batch, q_len, kv_heads, group, head_dim)

  # Pick per query head the top-k complete blocks before its own, scoring every landmark as if it sat in the
  # first of the k slots (the reference scores all older landmarks at one position too).
  taken = min(topk, num_blocks)
  anchor = (own_block - taken) * block + block - 1
  q_pick = apply_rope(q, slots - anchor, freqs).reshape(qg.shape)  # RoPE is relative: landmark keys at 0
  landmark_keys = jnp.swapaxes(key[:, :, block - 1::block], 1, 2)  # [B, N, Hkv, D]
  landmark_keys = apply_rope(landmark_keys, jnp.zeros(landmark_keys.shape[:2], jnp.int32), freqs)
  pick_scores = jnp.einsum("BTKGD,BNKD->BKGTN", q_pick, landmark_keys, preferred_element_type=jnp.float32)
  candidate = (jnp.arange(num_blocks)[None, None, :] < own_block[:, :, None])[:, None, None]
  _, picked = jax.lax.top_k(jnp.where(candidate, pick_scores, -jnp.inf), taken)  # [B, K, G, T, k]
  chosen = jnp.take_along_axis(jnp.broadcast_to(candidate, pick_scores.shape), picked, axis=-1)
  picked = jnp.sort(jnp.where(chosen, picked, -1), axis=-1)  # block order; unfilled slots first
  chosen = picked >= 0
  picked = jnp.maximum(picked, 0)
  virtual = own_block[:, None, None, :, None] - taken + jnp.arange(taken)  # the k slots before the own block
  virtual_positions = virtual[..., None] * block + jnp.arange(block)  # [B, 1, 1, T, k, block]

  rows = jnp.arange(batch)[:, None, None, None, None]
  heads_index = jnp.arange(kv_heads)[None, :, None, None, None]
  key_blocks = key.reshape(batch, kv_heads, num_blocks, block, head_dim)
  value_blocks = value.reshape(batch, kv_heads, num_blocks, block, value.shape[-1])
  picked_keys = key_blocks[rows, heads_index, picked]  # [B, K, G, T, k, block, D]
  picked_values = value_blocks[rows, heads_index, picked]
  picked_keys = _rotate(picked_keys, jnp.broadcast_to(virtual_positions, picked_keys.shape[:-1]), freqs)
  retrieved_scores = jnp.einsum("BTKGD,BKGTJSD->BKGTJS", qg, picked_keys, preferred_element_type=jnp.float32) * scale

  own_slots = own_block[:, :, None] * block + jnp.arange(block)  # [B, T, block]
  own_keys = jnp.swapaxes(key, 1, 2)[jnp.arange(batch)[:, None, None], own_slots]  # [B, T, block, Hkv, D]
  own_values = jnp.swapaxes(value, 1, 2)[jnp.arange(batch)[:, None, None], own_slots]
  own_keys = _rotate(own_keys, jnp.broadcast_to(own_slots[..., None], own_keys.shape[:-1]), freqs)
  own_scores = jnp.einsum("BTKGD,BTSKD->BKGTS", qg, own_keys, preferred_element_type=jnp.float32) * scale
  own_visible = (own_slots <= slots[:, :, None]) & (jnp.arange(block) < block - 1)

  outer = jnp.concatenate([jnp.where(own_visible[:, None, None], own_scores, -jnp.inf),
                           jnp.where(chosen, retrieved_scores[..., -1], -jnp.inf)], axis=-1)
  outer_max = jnp.max(outer, axis=-1, keepdims=True)
  outer_probs = jnp.exp(outer - jnp.where(jnp.isfinite(outer_max), outer_max, 0.0))
  outer_probs /= jnp.maximum(jnp.sum(outer_probs, axis=-1, keepdims=True), jnp.finfo(jnp.float32).tiny)
  own_probs, landmark_probs = outer_probs[..., :block], outer_probs[..., block:]
  inner_probs = jax.nn.softmax(retrieved_scores[..., :-1], axis=-1) * landmark_probs[..., None]
  out = jnp.einsum("BKGTS,BTSKE->BTKGE", own_probs.astype(v.dtype), own_values, preferred_element_type=jnp.float32)
  out += jnp.einsum("BKGTJS,BKGTJSE->BTKGE", inner_probs.astype(v.dtype), picked_values[..., :-1, :],
                    preferred_element_type=jnp.float32)
  out = out.reshape(batch, q_len, heads, value.shape[-1]).astype(q.dtype)
  return out, LandmarkCache(key, value, length)
