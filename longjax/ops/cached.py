"""Attention of new queries over a key/value cache whose rows are filled to different lengths.

A cache row holds keys in write order: slot j of row b is filled when j < kv_lengths[b]. The
queries of one call are new tokens whose own keys are already written: query t of row b sits
at slot q_offsets[b] + t and sees slots j <= q_offsets[b] + t (causal in write order), within
an optional window (j > slot - window) plus the first `sinks` slots.

The kernel cuts the queries into blocks of QUERY_BLOCK rows, laid out head-major once, and for each
walks key blocks with an online softmax (FlashAttention-2, as `blockwise`) under a `lax.while_loop`
that stops at the last block those rows may see (their own slots, or the filled length), so a decode
step costs what the filled part of the cache costs, not the buffer's size, a prefill chunk's early rows
skip the keys after them, and a long chunked prefill never materializes [T, S] scores. (With all of a
1024-token chunk's rows at once and the queries laid out [B, T, Hkv, G, D], prefilling 8K tokens of the
SmolLM2-135M attention shape took 10 s on 2 cores; in query blocks, 0.8 s, against 0.55 s for `flash`
over the whole sequence.) Forward only: this is the inference path. Softmax statistics are float32.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from longjax.positional import apply_rope

DEFAULT_KEY_BLOCK = 512
# Query rows a block of `cached_attention` (a prefill chunk is cut into these): `ops.flash`'s measured block.
QUERY_BLOCK = 256


class KVCache(NamedTuple):
  """Keys and values of every token so far, in write order, head-major (what the decode matmuls read without a
  transpose): key [B, Hkv, S, D], value [B, Hkv, S, Dv]; positions int32[B, S] (each key's position, for caches
  that keep keys before RoPE); length int32[B] (filled slots)."""

  key: jax.Array
  value: jax.Array
  positions: jax.Array
  length: jax.Array


def init_kv_cache(batch: int, max_length: int, kv_heads: int, head_dim: int, *, dtype,
                  value_dim: int | None = None) -> KVCache:
  value_dim = head_dim if value_dim is None else value_dim
  return KVCache(jnp.zeros((batch, kv_heads, max_length, head_dim), dtype),
                 jnp.zeros((batch, kv_heads, max_length, value_dim), dtype),
                 jnp.zeros((batch, max_length), jnp.int32), jnp.zeros((batch,), jnp.int32))


def write_rows(buffer: jax.Array, slots: jax.Array, values: jax.Array) -> jax.Array:
  """buffer [B, S, ...] with values [B, T, ...] written at slots int32[B, T]; slots outside [0, S) are dropped."""
  rows = jnp.broadcast_to(jnp.arange(buffer.shape[0])[:, None], slots.shape)
  return buffer.at[rows, slots].set(values.astype(buffer.dtype), mode="drop")


def write_heads(buffer: jax.Array, slots: jax.Array, values: jax.Array) -> jax.Array:
  """buffer [B, Hkv, S, D] with values [B, T, Hkv, D] written at slots int32[B, T]; slots outside [0, S) dropped."""
  rows = jnp.arange(buffer.shape[0])[:, None, None]
  heads = jnp.arange(buffer.shape[1])[None, :, None]
  return buffer.at[rows, heads, slots[:, None, :]].set(jnp.swapaxes(values, 1, 2).astype(buffer.dtype), mode="drop")


def visible(q_slots, k_slots, kv_lengths, *, window: int | None = None, sinks: int = 0):
  """bool[B, T, S']: query slots int[B, T] against key slots int[S'] of rows filled to kv_lengths int[B]."""
  q_slots, k_slots = q_slots[:, :, None], k_slots[None, None, :]
  mask = (k_slots <= q_slots) & (k_slots < kv_lengths[:, None, None])
  if window is not None:
    mask &= (k_slots > q_slots - window) | (k_slots < sinks)
  return mask


def cached_attention(q, k, v, *, q_offsets, kv_lengths, window: int | None = None, sinks: int = 0,
                     key_block: int = DEFAULT_KEY_BLOCK, key_positions=None, freqs=None):
  """q [B, T, H, D], head-major cache k [B, Hkv, S, D] and v [B, Hkv, S, Dv] -> [B, T, H, Dv] (q's dtype).

  q_offsets int32[B]: the slot of each row's first query; kv_lengths int32[B]: filled slots.
  Query head h reads key/value head h // (H // Hkv). A query that sees no key gives 0.
  With `key_positions` int32[B, S] and `freqs`, keys are cached before RoPE and each block is
  turned as it is read, so a dynamic method's re-rotation costs the filled part of the cache only.
  """
  batch, q_len, heads, head_dim = q.shape
  kv_heads, k_len, value_dim = k.shape[1], k.shape[2], v.shape[-1]
  if heads % kv_heads:
    raise ValueError(f"cached_attention: query heads {heads} must be a multiple of key/value heads {kv_heads}")
  group = heads // kv_heads
  # Whole blocks: a buffer that is not a multiple of key_block is read in one block (padding it here would
  # copy the whole cache at every step; `init_cache` sizes buffers in whole blocks).
  block = key_block if k_len % key_block == 0 else k_len
  num_blocks = k_len // block
  q_offsets = jnp.asarray(q_offsets, jnp.int32)
  kv_lengths = jnp.asarray(kv_lengths, jnp.int32)
  scale = 1.0 / jnp.sqrt(jnp.float32(head_dim))
  # Queries in blocks of at most QUERY_BLOCK rows, head-major [n, B, Hkv, G, bq, D], laid out once before the
  # loops: each block's logits tile stays small and each block reads only the key blocks its rows may see.
  q_block = min(QUERY_BLOCK, q_len)
  q_blocks = -(-q_len // q_block)
  q_heads = (q * scale.astype(q.dtype)).reshape(batch, q_len, kv_heads, group, head_dim)
  q_heads = jnp.pad(q_heads, [(0, 0), (0, q_blocks * q_block - q_len), (0, 0), (0, 0), (0, 0)])
  q_heads = q_heads.reshape(batch, q_blocks, q_block, kv_heads, group, head_dim).transpose(1, 0, 3, 4, 2, 5)

  def query_block(args):
    index, q_blk = args
    q_slots = q_offsets[:, None] + index * q_block + jnp.arange(q_block, dtype=jnp.int32)  # [B, bq]

    def body(i, carry):
      start = i * block
      k_blk = jax.lax.dynamic_slice_in_dim(k, start, block, axis=2)
      if freqs is not None:
        positions = jax.lax.dynamic_slice_in_dim(key_positions, start, block, axis=1)
        k_blk = jnp.swapaxes(apply_rope(jnp.swapaxes(k_blk, 1, 2), positions, freqs), 1, 2)
      v_blk = jax.lax.dynamic_slice_in_dim(v, start, block, axis=2)
      logits = jnp.einsum("BKGQD,BKSD->BKGQS", q_blk, k_blk, preferred_element_type=jnp.float32)
      mask = visible(q_slots, start + jnp.arange(block, dtype=jnp.int32), kv_lengths, window=window, sinks=sinks)
      logits = jnp.where(mask[:, None, None], logits, -jnp.inf)
      return online_softmax_step(carry, logits, v_blk)

    init = online_softmax_init(batch, kv_heads, group, q_block, value_dim)
    # Key blocks past the last slot these rows may see (their own, or the filled length) hold nothing for them.
    seen = jnp.max(jnp.minimum(q_slots[:, -1] + 1, kv_lengths))
    last_block = jnp.minimum((seen + block - 1) // block, num_blocks)
    return online_softmax_output(jax.lax.fori_loop(0, last_block, body, init), q.dtype)  # [B, bq, H, Dv]

  out = jax.lax.map(query_block, (jnp.arange(q_blocks), q_heads))  # [n, B, bq, H, Dv]
  return jnp.moveaxis(out, 0, 1).reshape(batch, q_blocks * q_block, heads, value_dim)[:, :q_len]


def online_softmax_init(batch: int, kv_heads: int, group: int, q_len: int, value_dim: int):
  """The float32 carry of `online_softmax_step` before any key: out [B, Hkv, G, T, Dv], row_max and row_sum
  [B, Hkv, G, T]."""
  stats_shape = (batch, kv_heads, group, q_len)
  return (jnp.zeros(stats_shape + (value_dim,), jnp.float32), jnp.full(stats_shape, -jnp.inf, jnp.float32),
          jnp.zeros(stats_shape, jnp.float32))


def online_softmax_step(carry, logits, v_blk):
  """One key block of the online softmax (FlashAttention's running max and sum, float32).

  logits float32[B, Hkv, G, T, S] with masked keys at -inf; v_blk [B, Hkv, S, Dv]. A row that has seen
  only masked keys keeps max -inf and sum 0.
  """
  out, row_max, row_sum = carry
  new_max = jnp.maximum(row_max, jnp.max(logits, axis=-1))
  safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
  probs = jnp.exp(logits - safe_max[..., None])
  correction = jnp.exp(jnp.where(jnp.isfinite(row_max), row_max - safe_max, -jnp.inf))
  row_sum = row_sum * correction + jnp.sum(probs, axis=-1)
  update = jnp.einsum("BKGTS,BKSE->BKGTE", probs.astype(v_blk.dtype), v_blk, preferred_element_type=jnp.float32)
  return out * correction[..., None] + update, new_max, row_sum


def online_softmax_output(carry, dtype):
  """The finished carry -> [B, T, H, Dv] in `dtype` (query head h = kv head h // G, group member h % G); a row
  that saw no key gives 0."""
  out, _, row_sum = carry
  batch, kv_heads, group, q_len, value_dim = out.shape
  out = out / jnp.where(row_sum > 0, row_sum, 1.0)[..., None]
  return jnp.moveaxis(out, 3, 1).reshape(batch, q_len, kv_heads * group, value_dim).astype(dtype)
