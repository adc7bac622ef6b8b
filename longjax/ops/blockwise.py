"""Blockwise attention in pure JAX: memory linear in length on any backend, forward and backward.

FlashAttention-2 (Dao 2023, arXiv 2307.08691) written with lax.scan: queries and keys are cut
into blocks, and one scan walks the (query block, key block) pairs that the static mask
(causal, window, sinks) can reach, so masked-out blocks cost nothing. The forward keeps a
running max and sum per query (online softmax); the custom VJP saves only the inputs, the output
and its log-sum-exp, and recomputes each block's probabilities in the backward pass.

Shapes and mask follow `reference.attention_mask`: q [B, T, H, D], k and v [B, S, Hkv, D],
query row t at key position S - T + t. `indexed_attention` masks by explicit global indices of
the query rows and keys instead, visits a given (possibly traced) list of block pairs and returns
the log-sum-exp too: context parallelism (ops/context_parallel.py) runs it on sequence shards
whose rows are not contiguous. Query heads are grouped over key/value heads
(h -> h // (H // Hkv)) by reshaping, never by repeating K and V. Softmax statistics and the
accumulators are float32; the matrix products run in the input dtype.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_BLOCK = 512


class BlockSpec(NamedTuple):
  """Everything static about one call: the mask rule and the block geometry."""

  causal: bool
  window: int | None
  sinks: int
  q_len: int
  k_len: int
  block_q: int
  block_k: int


def blockwise_attention(q, k, v, *, causal: bool = True, window: int | None = None, sinks: int = 0,
                        segment_ids: jax.Array | None = None, block_q: int = DEFAULT_BLOCK,
                        block_k: int = DEFAULT_BLOCK):
  """q [B, T, H, D], k/v [B, S, Hkv, D] -> [B, T, H, D]; rows that may see no key give 0."""
  q_len, k_len = q.shape[1], k.shape[1]
  spec = BlockSpec(causal, window, sinks, q_len, k_len, min(block_q, q_len), min(block_k, k_len))
  if segment_ids is not None and q_len > k_len:
    raise ValueError(f"blockwise_attention: segment_ids need q_len <= k_len, got {q_len} > {k_len}")
  masking = Masking(jnp.arange(q_len, dtype=jnp.int32) + (k_len - q_len), jnp.arange(k_len, dtype=jnp.int32),
                    None if segment_ids is None else segment_ids[:, k_len - q_len:], segment_ids,
                    jnp.asarray(block_pairs(spec)))
  return _attention(spec, q, k, v, masking)[0]


def indexed_attention(q, k, v, q_index, k_index, *, causal: bool = True, window: int | None = None, sinks: int = 0,
                      q_segment_ids: jax.Array | None = None, k_segment_ids: jax.Array | None = None,
                      pairs: jax.Array | None = None, block_q: int = DEFAULT_BLOCK, block_k: int = DEFAULT_BLOCK):
  """(out [B, T, H, D], lse float32 [B, T, H]) with the mask of `attention_mask` on global indices.

  q_index int32[T], k_index int32[S]: the sequence index of each query row and key (causal: k <= q).
  Segment ids [B, T] and [B, S] come together or not at all. `pairs` int32[P, 2] lists the (query block,
  key block) pairs to visit (default: all); a pair whose key block is past the last one is skipped, which
  pads per-device tables to one length. lse is -inf on rows that see no key. Both outputs are differentiable.
  """
  q_len, k_len = q.shape[1], k.shape[1]
  spec = BlockSpec(causal, window, sinks, q_len, k_len, min(block_q, q_len), min(block_k, k_len))
  if (q_segment_ids is None) != (k_segment_ids is None):
    raise ValueError("indexed_attention: give both q_segment_ids and k_segment_ids, or neither")
  if pairs is None:
    pairs = np.argwhere(np.ones((_blocks(q_len, spec.block_q), _blocks(k_len, spec.block_k)), bool))
  masking = Masking(jnp.asarray(q_index, jnp.int32), jnp.asarray(k_index, jnp.int32), q_segment_ids, k_segment_ids,
                    jnp.asarray(pairs, jnp.int32))
  return _attention(spec, q, k, v, masking)


class Masking(NamedTuple):
  """The traced part of a call's mask: indices, segment ids (or None) and the block pairs to visit."""

  q_index: jax.Array  # int32[T]: sequence index of each query row
  k_index: jax.Array  # int32[S]: sequence index of each key
  q_segments: jax.Array | None  # int32[B, T]
  k_segments: jax.Array | None  # int32[B, S]
  pairs: jax.Array  # int32[P, 2]


def round_up(n: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that is >= n."""
  return -(-n // multiple) * multiple


def _blocks(length: int, block: int) -> int:
  return round_up(length, block) // block


def reachable(spec: BlockSpec, q_min, q_max, k_min, k_max):
  """Whether a block of query indices [q_min, q_max] may see some key of [k_min, k_max] (arrays broadcast).

  causal needs k_min <= q_max; the window needs k_max > q_min - window or a sink (k_min < sinks).
  """
  keep = np.ones(np.broadcast_shapes(np.shape(q_min), np.shape(k_min)), bool)
  if spec.causal:
    keep &= k_min <= q_max
  if spec.window is not None:
    keep &= (k_max > q_min - spec.window) | (k_min < spec.sinks)
  return keep


def block_pairs(spec: BlockSpec) -> np.ndarray:
  """int32[P, 2]: the (query block, key block) pairs the static mask reaches, query-block major.

  A query block that reaches none (queries before every key) keeps key block 0, fully masked.
  """
  offset = spec.k_len - spec.q_len
  q_min = np.arange(_blocks(spec.q_len, spec.block_q))[:, None] * spec.block_q + offset
  k_min = np.arange(_blocks(spec.k_len, spec.block_k))[None, :] * spec.block_k
  keep = reachable(spec, q_min, q_min + spec.block_q - 1, k_min, k_min + spec.block_k - 1)
  keep[~keep.any(axis=1), 0] = True
  return np.argwhere(keep).astype(np.int32)


def _block_mask(spec: BlockSpec, m: Masking, q_block, k_block):
  """bool[B or 1, 1, 1, bq, bk] for one pair of the padded inputs: the mask on indices, minus padded keys."""
  q_pos = _slice_rows(m.q_index, q_block, spec.block_q, axis=0)[:, None]
  k_pos = _slice_rows(m.k_index, k_block, spec.block_k, axis=0)[None, :]
  # Unclamped: a skipped pair's key block lies past the end, so every one of its keys is masked.
  mask = (k_block * spec.block_k + jnp.arange(spec.block_k) < spec.k_len)[None, :]
  if spec.causal:
    mask &= k_pos <= q_pos
  if spec.window is not None:
    mask &= (q_pos - spec.window < k_pos) | (k_pos < spec.sinks)
  mask = mask[None]
  if m.q_segments is not None:
    q_seg = _slice_rows(m.q_segments, q_block, spec.block_q)
    k_seg = _slice_rows(m.k_segments, k_block, spec.block_k)
    mask = mask & (q_seg[:, :, None] == k_seg[:, None, :])
  return mask[:, None, None]


def _pad_to(x, length: int, axis: int = 1, value=0):
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


def _padded_inputs(spec: BlockSpec, q, k, v, m: Masking):
  """Pad T and S up to whole blocks (padded query rows are dropped, padded keys masked); group query heads:
  q [B, Tp, Hkv, G, D]."""
  batch, _, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  q_pad = round_up(spec.q_len, spec.block_q)
  k_pad = round_up(spec.k_len, spec.block_k)
  q = _pad_to(q, q_pad).reshape(batch, q_pad, kv_heads, heads // kv_heads, head_dim)
  k, v = _pad_to(k, k_pad), _pad_to(v, k_pad)
  segments = {} if m.q_segments is None else dict(q_segments=_pad_to(m.q_segments, q_pad, value=-2),
                                                  k_segments=_pad_to(m.k_segments, k_pad, value=-1))
  m = m._replace(q_index=_pad_to(m.q_index, q_pad, axis=0), k_index=_pad_to(m.k_index, k_pad, axis=0), **segments)
  return q, k, v, m


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(spec: BlockSpec, q, k, v, m: Masking):
  out, lse = forward(spec, q, k, v, m)
  return out.astype(q.dtype), lse


def _slice_rows(x, block, size: int, axis: int = 1):
  return jax.lax.dynamic_slice_in_dim(x, block * size, size, axis=axis)


def _update_rows(x, rows, block, size: int):
  return jax.lax.dynamic_update_slice_in_dim(x, rows, block * size, axis=1)


def _logits(spec: BlockSpec, m: Masking, q_blk, k_blk, qi, kj):
  """float32 [B, Hkv, G, bq, bk] scaled logits and the mask of pair (qi, kj)."""
  scale = 1.0 / np.sqrt(q_blk.shape[-1])
  logits = jnp.einsum("BQKGD,BSKD->BKGQS", q_blk, k_blk, preferred_element_type=jnp.float32) * scale
  return logits, _block_mask(spec, m, qi, kj)


def forward(spec: BlockSpec, q, k, v, m: Masking):
  """Online softmax over the pairs of `m`: (out float32 [B, T, H, D], lse float32 [B, T, H], -inf where no key)."""
  batch, q_len, heads, head_dim = q.shape
  q_p, k_p, v_p, m_p = _padded_inputs(spec, q, k, v, m)
  rows = q_p.shape[:4]  # [B, Tp, Hkv, G]

  def step(carry, pair):
    acc, row_max, row_sum = carry
    # Tie the pair to traced data: else JAX's partial evaluation (a scanned, differentiated model) hoists the
    # pair-only mask out of this loop and stacks it for every pair, [P, B, Hkv, G, bq, bk] bools.
    pair, acc = jax.lax.optimization_barrier((pair, acc))
    qi, kj = pair[0], pair[1]
    q_blk = _slice_rows(q_p, qi, spec.block_q)
    k_blk, v_blk = _slice_rows(k_p, kj, spec.block_k), _slice_rows(v_p, kj, spec.block_k)
    logits, mask = _logits(spec, m_p, q_blk, k_blk, qi, kj)
    logits = jnp.where(mask, logits, -jnp.inf)
    old_max = _slice_rows(row_max, qi, spec.block_q)  # [B, bq, Hkv, G]
    new_max = jnp.maximum(old_max, jnp.moveaxis(logits.max(axis=-1), 3, 1))
    # A row that has seen no key yet keeps max -inf; subtract 0 instead so exp gives 0, not NaN.
    safe_max = jnp.where(jnp.isneginf(new_max), 0.0, new_max)
    probs = jnp.exp(logits - jnp.moveaxis(safe_max, 1, 3)[..., None])
    correction = jnp.exp(old_max - safe_max)
    new_sum = correction * _slice_rows(row_sum, qi, spec.block_q) + jnp.moveaxis(probs.sum(axis=-1), 3, 1)
    new_acc = correction[..., None] * _slice_rows(acc, qi, spec.block_q) + jnp.einsum(
        "BKGQS,BSKD->BQKGD", probs.astype(v_blk.dtype), v_blk, preferred_element_type=jnp.float32)
    carry = (_update_rows(acc, new_acc, qi, spec.block_q), _update_rows(row_max, new_max, qi, spec.block_q),
             _update_rows(row_sum, new_sum, qi, spec.block_q))
    return carry, None

  init = (jnp.zeros((*rows, head_dim), jnp.float32), jnp.full(rows, -jnp.inf, jnp.float32),
          jnp.zeros(rows, jnp.float32))
  (acc, row_max, row_sum), _ = jax.lax.scan(step, init, m_p.pairs)
  seen = row_sum > 0
  out = jnp.where(seen[..., None], acc / jnp.where(seen, row_sum, 1.0)[..., None], 0.0)
  lse = jnp.where(seen, row_max + jnp.log(jnp.where(seen, row_sum, 1.0)), -jnp.inf)
  return out[:, :q_len].reshape(batch, q_len, heads, head_dim), lse[:, :q_len].reshape(batch, q_len, heads)


def _forward_rule(spec, q, k, v, m):
  out, lse = forward(spec, q, k, v, m)
  out = out.astype(q.dtype)
  return (out, lse), (q, k, v, m, out, lse)


def backward(spec: BlockSpec, q, k, v, m: Masking, out, lse, d_out, d_lse=None):
  """FlashAttention-2 backward over the pairs of `m`: float32 (dq, dk, dv), each block's probabilities recomputed
  from `lse` [B, T, H]. `out` and `lse` may be those of a larger softmax that this call is one part of (a ring
  step): then dq, dk and dv are this part's share of the whole one's gradients."""
  batch, q_len, heads, head_dim = q.shape
  q_p, k_p, v_p, m_p = _padded_inputs(spec, q, k, v, m)
  kv_heads, group = q_p.shape[2], q_p.shape[3]
  grouped = (batch, q_len, kv_heads, group, head_dim)
  do_p = _pad_to(d_out.reshape(grouped), q_p.shape[1])
  # delta_i = sum_d dO_id O_id = sum_j P_ij dP_ij, the softmax Jacobian's diagonal term; an lse output's
  # cotangent enters with the opposite sign (d lse_i / d s_ij = P_ij).
  delta = jnp.einsum("BTKGD,BTKGD->BTKG", d_out.reshape(grouped).astype(jnp.float32),
                     out.reshape(grouped).astype(jnp.float32))
  if d_lse is not None:
    delta = delta - d_lse.reshape(grouped[:4])
  delta = _pad_to(delta, q_p.shape[1])
  # +inf makes exp(logit - lse) exactly 0 for rows that saw no key.
  lse = _pad_to(jnp.where(jnp.isneginf(lse), jnp.inf, lse).reshape(grouped[:4]), q_p.shape[1])
  scale = 1.0 / np.sqrt(head_dim)

  def step(carry, pair):
    dq, dk, dv = carry
    qi, kj = pair[0], pair[1]
    q_blk, do_blk = _slice_rows(q_p, qi, spec.block_q), _slice_rows(do_p, qi, spec.block_q)
    k_blk, v_blk = _slice_rows(k_p, kj, spec.block_k), _slice_rows(v_p, kj, spec.block_k)
    logits, mask = _logits(spec, m_p, q_blk, k_blk, qi, kj)
    lse_blk = jnp.moveaxis(_slice_rows(lse, qi, spec.block_q), 1, 3)[..., None]
    probs = jnp.where(mask, jnp.exp(logits - lse_blk), 0.0)  # [B, Hkv, G, bq, bk]
    d_probs = jnp.einsum("BQKGD,BSKD->BKGQS", do_blk, v_blk, preferred_element_type=jnp.float32)
    delta_blk = jnp.moveaxis(_slice_rows(delta, qi, spec.block_q), 1, 3)[..., None]
    d_logits = probs * (d_probs - delta_blk) * scale
    dv_blk = jnp.einsum("BKGQS,BQKGD->BSKD", probs.astype(do_blk.dtype), do_blk,
                        preferred_element_type=jnp.float32)
    dk_blk = jnp.einsum("BKGQS,BQKGD->BSKD", d_logits.astype(q_blk.dtype), q_blk,
                        preferred_element_type=jnp.float32)
    dq_blk = jnp.einsum("BKGQS,BSKD->BQKGD", d_logits.astype(k_blk.dtype), k_blk,
                        preferred_element_type=jnp.float32)
    dq = _update_rows(dq, _slice_rows(dq, qi, spec.block_q) + dq_blk, qi, spec.block_q)
    dk = _update_rows(dk, _slice_rows(dk, kj, spec.block_k) + dk_blk, kj, spec.block_k)
    dv = _update_rows(dv, _slice_rows(dv, kj, spec.block_k) + dv_blk, kj, spec.block_k)
    return (dq, dk, dv), None

  init = (jnp.zeros(q_p.shape, jnp.float32), jnp.zeros(k_p.shape, jnp.float32), jnp.zeros(v_p.shape, jnp.float32))
  (dq, dk, dv), _ = jax.lax.scan(step, init, m_p.pairs)
  return dq[:, :q_len].reshape(q.shape), dk[:, :spec.k_len], dv[:, :spec.k_len]


def _backward_rule(spec: BlockSpec, residuals, cotangents):
  q, k, v, m, out, lse = residuals
  d_out, d_lse = cotangents
  dq, dk, dv = backward(spec, q, k, v, m, out, lse, d_out, d_lse)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_attention.defvjp(_forward_rule, _backward_rule)
