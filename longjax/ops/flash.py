"""Causal attention over one whole sequence, blocked for long lengths: FlashAttention-2's loop order.

`flash_attention(q, k, v)`: q [B, T, H, D], k/v [B, T, Hkv, D] -> [B, T, H, D], causal with T == S (a whole
sequence: evaluation, a prompt read in one call). Memory is linear in length, as `blockwise`'s, but the work
is laid out for a CPU (Dao 2023, arXiv 2307.08691, Algorithm 1's loop order):

  - an outer loop over query blocks and, inside it, a loop over only the key blocks before the diagonal,
    whose trip count is the query block's index: no (query block, key block) pair table, no pair that the
    causal mask hides, and no mask at all off the diagonal (the diagonal block is the one masked block, a
    static lower triangle, read first so that every row's running max is finite from the start);
  - the accumulator, running max and sum of one query block are the inner loop's whole carry ([Hkv, G, bq, D]
    float32, a few hundred KiB), where `blockwise` updates rows of length-T buffers through dynamic slices at
    every pair;
  - head-major blocks, [B, Hkv, G, bq, D] for queries and [B, Hkv, bk, D] for keys and values, laid out once
    before the loops: every block matmul is a batched GEMM over (B, Hkv) reading contiguous rows, with the G
    query heads of a key/value head stacked as rows (GQA without repeating K and V).

The backward pass is `blockwise.backward` (FlashAttention-2's, recomputing each block's probabilities from
the float32 log-sum-exp this forward keeps), so the kernel is differentiable like `blockwise`.
Measured on the SmolLM2-135M attention shape (9/3 heads, head_dim 64, 2 CPU cores): see benchmarks/README.md.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from longjax.ops import blockwise

# 256 measured best at 2K and 4K (forward, SmolLM2-135M attention shape, 2 cores: 56 and 188-300 ms against
# 64 and 336-484 ms at 512), equal within noise at 8K and 16K.
DEFAULT_BLOCK = 256


def flash_attention(q, k, v, *, block: int = DEFAULT_BLOCK):
  """Causal q [B, T, H, D], k/v [B, T, Hkv, D] -> [B, T, H, D] (same T; H a multiple of Hkv)."""
  if q.shape[1] != k.shape[1]:
    raise ValueError(f"flash_attention: needs one whole sequence (T == S), got T={q.shape[1]}, S={k.shape[1]}")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"flash_attention: query heads {q.shape[2]} must be a multiple of key/value heads {k.shape[2]}")
  return _flash(q, k, v, min(block, q.shape[1]))


def _blocks(x, block: int):
  """[B, T, Hkv, ...] -> [n, B, Hkv, ..., block, D]: zero-padded to whole blocks, head-major."""
  batch, length = x.shape[:2]
  num = -(-length // block)
  x = jnp.pad(x, [(0, 0), (0, num * block - length)] + [(0, 0)] * (x.ndim - 2))
  x = x.reshape((batch, num, block) + x.shape[2:])
  # [B, n, bq, Hkv, (G,) D] -> [n, B, Hkv, (G,) bq, D]
  heads = tuple(range(3, x.ndim - 1))
  return x.transpose((1, 0) + heads + (2, x.ndim - 1))


def forward(q, k, v, block: int):
  """(out [B, T, H, D] in q's dtype, float32 log-sum-exp [B, T, H]). Padded rows (past T) are computed and
  dropped; padded keys sit after every real query, so the causal mask alone hides them from real rows."""
  batch, length, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  group = heads // kv_heads
  q_scaled = (q * (1.0 / np.sqrt(head_dim))).astype(q.dtype).reshape(batch, length, kv_heads, group, head_dim)
  q_blocks = _blocks(q_scaled, block)  # [n, B, Hkv, G, bq, D]
  k_blocks, v_blocks = _blocks(k, block), _blocks(v, block)  # [n, B, Hkv, bk, D]
  diagonal = jnp.asarray(np.tril(np.ones((block, block), bool)))

  def logits_of(q_blk, j):
    return jnp.einsum("BKGQD,BKSD->BKGQS", q_blk, k_blocks[j], preferred_element_type=jnp.float32)

  def values_of(probs, j):
    return jnp.einsum("BKGQS,BKSD->BKGQD", probs.astype(v.dtype), v_blocks[j], preferred_element_type=jnp.float32)

  def query_block(args):
    i, q_blk = args
    logits = jnp.where(diagonal, logits_of(q_blk, i), -jnp.inf)  # every row sees its own key: max is finite
    row_max = jnp.max(logits, axis=-1)
    probs = jnp.exp(logits - row_max[..., None])
    carry = (values_of(probs, i), row_max, jnp.sum(probs, axis=-1))

    def key_block(j, carry):
      acc, row_max, row_sum = carry
      logits = logits_of(q_blk, j)
      new_max = jnp.maximum(row_max, jnp.max(logits, axis=-1))
      correction = jnp.exp(row_max - new_max)
      probs = jnp.exp(logits - new_max[..., None])
      return (acc * correction[..., None] + values_of(probs, j), new_max,
              row_sum * correction + jnp.sum(probs, axis=-1))

    acc, row_max, row_sum = jax.lax.fori_loop(0, i, key_block, carry)
    return (acc / row_sum[..., None]).astype(q.dtype), row_max + jnp.log(row_sum)

  num = q_blocks.shape[0]
  out, lse = jax.lax.map(query_block, (jnp.arange(num), q_blocks))  # [n, B, Hkv, G, bq, (D)]
  out = out.transpose(1, 0, 4, 2, 3, 5).reshape(batch, num * block, heads, head_dim)[:, :length]
  lse = lse.transpose(1, 0, 4, 2, 3).reshape(batch, num * block, heads)[:, :length]
  return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _flash(q, k, v, block):
  return forward(q, k, v, block)[0]


def _flash_fwd(q, k, v, block):
  out, lse = forward(q, k, v, block)
  return out, (q, k, v, out, lse)


def _flash_bwd(block, residuals, d_out):
  q, k, v, out, lse = residuals
  length = q.shape[1]
  spec = blockwise.BlockSpec(True, None, 0, length, length, block, block)
  positions = jnp.arange(length, dtype=jnp.int32)
  masking = blockwise.Masking(positions, positions, None, None, jnp.asarray(blockwise.block_pairs(spec)))
  dq, dk, dv = blockwise.backward(spec, q, k, v, masking, out, lse, d_out)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_flash.defvjp(_flash_fwd, _flash_bwd)
