"""Position-remapping attention: Self-Extend, Dual Chunk Attention, ReRoPE, and log-n query scaling.

Training-free context extension that keeps every query-key distance inside what the model saw in
pre-training by giving each (query, key) pair positions from one of a few maps ("passes"):

  Self-Extend (Jin et al. 2024, arXiv 2401.01325; datamllab/LongLM):
    pass 0 (neighbours, i - j < window): true positions i, j;
    pass 1 (grouped, beyond):            query i // G + window - window // G, key j // G.
  Dual Chunk Attention (An et al. 2024, arXiv 2402.17463; HKUNLP/ChunkLlama), chunk length
  s = chunk_size - local_window, c = chunk_size:
    pass 0 (same chunk):                 query i mod s, key j mod s;
    pass 1 (previous chunk):             query min(s + i mod s, c - 1), key j mod s;
    pass 2 (earlier chunks):             query c - 1, key j mod s
    (the paper's maps; ChunkLlama's code caps the query at c instead, with c = 3/4 of the pre-trained length).
  ReRoPE (Su 2023, bojone/rerope):
    pass 0 (i - j < window):             true positions i, j;
    pass 1 (beyond):                     query `window`, key 0 (the relative position clipped at window).

i and j are the tokens' positions (int32, per row). Each pass rotates q and k with RoPE at its own
positions; one softmax runs over the merged logits, which is the log-sum-exp merge of the passes'
separate softmaxes. Query heads are grouped over key/value heads by reshaping, never by repeating K and V.

Two kernels, both with an online softmax (float32 statistics) and memory linear in length:
  `remap_whole_sequence` (a whole causal sequence: evaluation, the self_extend / dca / rerope types' call
  without a cache) walks (query block, key block) pairs in `ops.flash`'s order: pairs past the diagonal
  are skipped, and a pair computes only the passes some of its (query, key) pairs read (a `lax.cond` per
  pass), so most pairs cost one pass's matmul: Self-Extend and ReRoPE read pass 0 only near the diagonal,
  DCA pass 2 only beyond the previous chunk.
  `remap_attention` (a KV cache: prefill chunks and decode steps) cuts the call's queries into blocks, as
  `cached_attention` does, and for each walks the key blocks its rows may see, computing only the passes
  each block pair reads; `block_size=None` reads all keys as one block (the direct form).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from longjax.ops.cached import online_softmax_init, online_softmax_output, online_softmax_step
from longjax.positional import Frequencies, apply_rope

# Query and key block of `remap_whole_sequence`, and the query block of `remap_attention`: `ops.flash`'s
# measured block.
DEFAULT_BLOCK = 256
QUERY_BLOCK = 256


class Remap(NamedTuple):
  """`passes(q_pos [B, T], k_pos [B, S]) -> [(q positions [B, T], k positions [B, S]), ...]` and
  `region(q_pos [B, T, 1], k_pos [B, 1, S]) -> int32[B, T, S]`, the pass each pair reads."""

  passes: Callable[[jax.Array, jax.Array], list[tuple[jax.Array, jax.Array]]]
  region: Callable[[jax.Array, jax.Array], jax.Array]


def self_extend_remap(group_size: int, window: int) -> Remap:
  """Self-Extend: neighbours inside `window` at true positions, floor-divided positions beyond."""
  def passes(q_pos, k_pos):
    return [(q_pos, k_pos), (q_pos // group_size + window - window // group_size, k_pos // group_size)]

  return Remap(passes, lambda i, j: (i - j >= window).astype(jnp.int32))


def dca_remap(chunk_size: int, local_window: int) -> Remap:
  """Dual Chunk Attention: intra-chunk, successive-chunk and inter-chunk position maps."""
  chunk_len = chunk_size - local_window

  def passes(q_pos, k_pos):
    inner, k_inner = q_pos % chunk_len, k_pos % chunk_len
    return [(inner, k_inner), (jnp.minimum(chunk_len + inner, chunk_size - 1), k_inner),
            (jnp.full_like(q_pos, chunk_size - 1), k_inner)]

  return Remap(passes, lambda i, j: jnp.minimum(i // chunk_len - j // chunk_len, 2).astype(jnp.int32))


def rerope_remap(window: int) -> Remap:
  """ReRoPE: true positions inside `window`, the relative position clipped at `window` beyond it."""
  def passes(q_pos, k_pos):
    return [(q_pos, k_pos), (jnp.full_like(q_pos, window), jnp.zeros_like(k_pos))]

  return Remap(passes, lambda i, j: (i - j >= window).astype(jnp.int32))


def logn_scale(positions: jax.Array, length: int) -> jax.Array:
  """float32[B, T] query scale max(1, log(position + 1) / log(length)) (Qwen-1's logn_attn, ReRoPE's log-n)."""
  scale = jnp.log(positions.astype(jnp.float32) + 1.0) / np.log(length)
  return jnp.maximum(scale, 1.0)


def remap_attention(q, k, v, *, q_positions, k_positions, freqs: Frequencies, remap: Remap, q_slots, kv_lengths=None,
                    block_size: int | None = None):
  """q [B, T, H, D] and head-major k [B, Hkv, S, D], v [B, Hkv, S, Dv], all before RoPE -> [B, T, H, Dv].

  q_positions int32[B, T], k_positions int32[B, S]: the positions the maps read. Causal in slots:
  query t of row b sits at slot q_slots[b, t] and sees key slots j <= q_slots[b, t], j < kv_lengths[b].
  kv_lengths None: every slot is filled, and the loop over key blocks has a static length (differentiable);
  int32[B] (a cache): the loop stops at the last filled block (forward only). A query that sees no key gives 0.
  """
  batch, q_len, heads, head_dim = q.shape
  kv_heads, k_len, value_dim = k.shape[1], k.shape[2], v.shape[-1]
  if heads % kv_heads:
    raise ValueError(f"remap_attention: query heads {heads} must be a multiple of key/value heads {kv_heads}")
  group = heads // kv_heads
  pairs = remap.passes(q_positions, k_positions)
  scale = 1.0 / np.sqrt(head_dim)
  # Queries in blocks of at most QUERY_BLOCK rows (as `cached_attention`), per pass rotated, scaled and laid out
  # head-major once: [n, P, B, Hkv, G, bq, D]; their positions and slots [n, B, bq].
  q_block = min(QUERY_BLOCK, q_len)
  qs = jnp.stack([_blocks((apply_rope(q, qp, freqs) * scale).astype(q.dtype).reshape(
      batch, q_len, kv_heads, group, head_dim), q_block) for qp, _ in pairs], axis=1)
  q_pos_blocks, q_slot_blocks = _blocks(q_positions, q_block), _blocks(jnp.asarray(q_slots, jnp.int32), q_block)
  k_rows = jnp.swapaxes(k, 1, 2)  # apply_rope reads [B, S, Hkv, D]
  ks = jnp.stack([jnp.swapaxes(apply_rope(k_rows, kp, freqs), 1, 2) for _, kp in pairs])  # [P, B, Hkv, S, D]
  block = k_len if block_size is None or block_size >= k_len else block_size
  padded = -(-k_len // block) * block
  ks = jnp.pad(ks, [(0, 0)] * 3 + [(0, padded - k_len), (0, 0)])
  v = jnp.pad(v, [(0, 0)] * 2 + [(0, padded - k_len), (0, 0)])
  k_positions = jnp.pad(k_positions, [(0, 0), (0, padded - k_len)])
  num_blocks = padded // block
  static = kv_lengths is None
  kv_lengths = jnp.full((batch,), k_len, jnp.int32) if static else jnp.asarray(kv_lengths, jnp.int32)

  def query_block(args):
    q_blk, q_pos, q_slot = args  # [P, B, Hkv, G, bq, D], [B, bq], [B, bq]

    @jax.checkpoint  # the backward recomputes each block's logits instead of storing [T, S] of them
    def body(i, carry):
      start = i * block
      k_blk = jax.lax.dynamic_slice_in_dim(ks, start, block, axis=3)
      v_blk = jax.lax.dynamic_slice_in_dim(v, start, block, axis=2)
      k_pos = jax.lax.dynamic_slice_in_dim(k_positions, start, block, axis=1)
      k_slots = start + jnp.arange(block, dtype=jnp.int32)
      mask = (k_slots[None, None] <= q_slot[:, :, None]) & (k_slots[None, None] < kv_lengths[:, None, None])
      region = jnp.where(mask, remap.region(q_pos[:, :, None], k_pos[:, None, :]), -1)  # [B, bq, bk]
      logits = _merged_logits(lambda p: jnp.einsum("BKGQD,BKSD->BKGQS", q_blk[p], k_blk[p],
                                                   preferred_element_type=jnp.float32),
                              region[:, None, None], len(pairs), (batch, kv_heads, group, q_block, block))
      return online_softmax_step(carry, logits, v_blk)

    # Static trip count without a cache (differentiable); with one, stop after the last key block these rows
    # may see (their own slots, or the filled length): a decode step reads only the filled blocks.
    last = num_blocks if static else jnp.minimum(
        (jnp.max(jnp.minimum(q_slot[:, -1] + 1, kv_lengths)) + block - 1) // block, num_blocks)
    init = online_softmax_init(batch, kv_heads, group, q_block, value_dim)
    return online_softmax_output(jax.lax.fori_loop(0, last, body, init), q.dtype)  # [B, bq, H, Dv]

  out = jax.lax.map(query_block, (qs, q_pos_blocks, q_slot_blocks))  # [n, B, bq, H, Dv]
  return jnp.moveaxis(out, 0, 1).reshape(batch, -1, heads, value_dim)[:, :q_len]


def _merged_logits(logits_of_pass, region, num_passes: int, shape):
  """float32 logits of `shape` [..., T, S] taking pass region[..., t, s]'s logits (-inf where region is -1, a masked
  pair). A block whose pairs all read one pass is that pass's logits as they come (no select); otherwise a pass
  that no pair reads is skipped (lax.cond), so its matmul is never run."""
  def mixed():
    merged = jnp.full(shape, -jnp.inf, jnp.float32)
    for p in range(num_passes):
      take = region == p
      merged = jax.lax.cond(jnp.any(take), lambda m, p=p, take=take: jnp.where(take, logits_of_pass(p), m),
                            lambda m: m, merged)
    return merged

  # branch p < num_passes: every pair reads pass p; branch num_passes: mixed (or masked) pairs
  branch = num_passes
  for p in range(num_passes - 1, -1, -1):
    branch = jnp.where(jnp.all(region == p), p, branch)
  return jax.lax.switch(branch, [lambda p=p: logits_of_pass(p) for p in range(num_passes)] + [mixed])


def _blocks(x, block: int):
  """[B, T, ...] -> [n, B, ..., block, D] (heads before the block's rows; positions [B, T] -> [n, B, block])."""
  batch, length = x.shape[:2]
  num = -(-length // block)
  x = jnp.pad(x, [(0, 0), (0, num * block - length)] + [(0, 0)] * (x.ndim - 2))
  x = x.reshape((batch, num, block) + x.shape[2:])
  if x.ndim == 3:
    return jnp.swapaxes(x, 0, 1)
  heads = tuple(range(3, x.ndim - 1))
  return x.transpose((1, 0) + heads + (2, x.ndim - 1))


def remap_whole_sequence(q, k, v, *, positions, freqs: Frequencies, remap: Remap, block_size: int = DEFAULT_BLOCK):
  """Causal attention of a whole sequence, token t at slot t: q [B, T, H, D], k/v [B, T, Hkv, D] before RoPE,
  positions int32[B, T] -> [B, T, H, D]. Differentiable (the loops have static trip counts)."""
  batch, length, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  if heads % kv_heads:
    raise ValueError(f"remap_whole_sequence: query heads {heads} must be a multiple of key/value heads {kv_heads}")
  group = heads // kv_heads
  block = min(block_size, length)
  pairs = remap.passes(positions, positions)
  scale = 1.0 / np.sqrt(head_dim)
  # Per pass, rotated once and laid out in head-major blocks: q [P, n, B, Hkv, G, bq, D], k [P, n, B, Hkv, bk, D].
  qs = jnp.stack([_blocks((apply_rope(q, qp, freqs) * scale).astype(q.dtype).reshape(
      batch, length, kv_heads, group, head_dim), block) for qp, _ in pairs])
  ks = jnp.stack([_blocks(apply_rope(k, kp, freqs), block) for _, kp in pairs])
  v_blocks = _blocks(v, block)
  pos_blocks = _blocks(positions, block)  # [n, B, block]
  num = pos_blocks.shape[0]
  value_dim = v.shape[-1]
  rows = jnp.arange(block, dtype=jnp.int32)

  def query_block(args):
    i, q_blk, q_pos = args  # q_blk [P, B, Hkv, G, bq, D], q_pos [B, bq]

    @jax.checkpoint  # the backward recomputes each pair's logits instead of storing them
    def key_block(j, carry):
      def visit(carry):
        causal = (j * block + rows)[None, :] <= (i * block + rows)[:, None]  # [bq, bk]
        region = jnp.where(causal, remap.region(q_pos[:, :, None], pos_blocks[j][:, None, :]), -1)
        logits = _merged_logits(lambda p: jnp.einsum("BKGQD,BKSD->BKGQS", q_blk[p], ks[p, j],
                                                     preferred_element_type=jnp.float32),
                                region[:, None, None], len(pairs), (batch, kv_heads, group, block, block))
        return online_softmax_step(carry, logits, v_blocks[j])

      return jax.lax.cond(j <= i, visit, lambda c: c, carry)

    carry = jax.lax.fori_loop(0, num, key_block, online_softmax_init(batch, kv_heads, group, block, value_dim))
    return online_softmax_output(carry, q.dtype)  # [B, bq, H, Dv]

  out = jax.lax.map(query_block, (jnp.arange(num), jnp.moveaxis(qs, 1, 0), pos_blocks))  # [n, B, bq, H, Dv]
  return jnp.moveaxis(out, 0, 1).reshape(batch, num * block, heads, value_dim)[:, :length]


def _whole_sequence(q, k, v, positions, freqs, remap, block_size):
  """Causal attention of a whole sequence q [B, T, H, D], k/v [B, T, Hkv, D] (token t at slot t)."""
  if block_size is None:  # the direct form: all keys as one block
    slots = jnp.broadcast_to(jnp.arange(q.shape[1], dtype=jnp.int32), positions.shape)
    return remap_attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), q_positions=positions,
                           k_positions=positions, freqs=freqs, remap=remap, q_slots=slots)
  return remap_whole_sequence(q, k, v, positions=positions, freqs=freqs, remap=remap, block_size=block_size)


def self_extend_attention(q, k, v, *, positions, freqs: Frequencies, group_size: int, window: int,
                          block_size: int | None = None):
  """Self-Extend, q [B, T, H, D] and k/v [B, T, Hkv, D] before RoPE, positions int32[B, T] -> [B, T, H, D]."""
  return _whole_sequence(q, k, v, positions, freqs, self_extend_remap(group_size, window), block_size)


def dca_attention(q, k, v, *, positions, freqs: Frequencies, chunk_size: int, local_window: int,
                  block_size: int | None = None):
  """Dual Chunk Attention, q [B, T, H, D] and k/v [B, T, Hkv, D] before RoPE, positions int32[B, T] -> [B, T, H, D]."""
  return _whole_sequence(q, k, v, positions, freqs, dca_remap(chunk_size, local_window), block_size)


def rerope_attention(q, k, v, *, positions, freqs: Frequencies, window: int, block_size: int | None = None):
  """ReRoPE, q [B, T, H, D] and k/v [B, T, Hkv, D] before RoPE, positions int32[B, T] -> [B, T, H, D]."""
  return _whole_sequence(q, k, v, positions, freqs, rerope_remap(window), block_size)
