"""Blockwise attention in pure JAX: memory linear in length on any backend, forward and backward.

FlashAttention-2 (Dao 2023, arXiv 2307.08691) written with lax.scan: queries and keys are cut
into blocks, and one scan walks the (query block, key block) pairs that the static mask
(causal, window, sinks) can reach, so masked-out blocks cost nothing. The forward keeps a
running max and sum per query (online softmax); the custom VJP saves only the inputs, the output
and its log-sum-exp, and recomputes each block's probabilities in the backward pass.

Shapes and mask follow `reference.attention_mask`: q [B, T, H, D], k and v [B, S, Hkv, D],
query row t at key position S - T + t. Query heads are grouped over key/value heads
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
  has_segments = segment_ids is not None
  if has_segments and q_len > k_len:
    raise ValueError(f"blockwise_attention: segment_ids need q_len <= k_len, got {q_len} > {k_len}")
  if not has_segments:
    segment_ids = jnp.zeros((q.shape[0], k_len), jnp.int32)
  return _attention(spec, has_segments, q, k, v, segment_ids)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def block_pairs(spec: BlockSpec) -> np.ndarray:
  """int32[P, 2]: the (query block, key block) pairs the static mask reaches, query-block major.

  A pair is kept when some query position in the block may see some key position in it:
  causal needs k_min <= q_max; the window needs k_max > q_min - window or a sink (k_min < sinks).
  A query block that reaches none (queries before every key) keeps key block 0, fully masked.
  """
  offset = spec.k_len - spec.q_len
  q_blocks = _round_up(spec.q_len, spec.block_q) // spec.block_q
  k_blocks = _round_up(spec.k_len, spec.block_k) // spec.block_k
  q_min = np.arange(q_blocks)[:, None] * spec.block_q + offset
  q_max = q_min + spec.block_q - 1
  k_min = np.arange(k_blocks)[None, :] * spec.block_k
  k_max = k_min + spec.block_k - 1
  keep = np.ones((q_blocks, k_blocks), bool)
  if spec.causal:
    keep &= k_min <= q_max
  if spec.window is not None:
    keep &= (k_max > q_min - spec.window) | (k_min < spec.sinks)
  keep[~keep.any(axis=1), 0] = True
  return np.argwhere(keep).astype(np.int32)


def _block_mask(spec: BlockSpec, has_segments: bool, q_block, k_block, segment_ids):
  """bool[B or 1, 1, 1, bq, bk] for one pair: the reference mask, plus keys past the end (padding)."""
  offset = spec.k_len - spec.q_len
  q_pos = q_block * spec.block_q + jnp.arange(spec.block_q)[:, None] + offset
  k_pos = k_block * spec.block_k + jnp.arange(spec.block_k)[None, :]
  mask = k_pos < spec.k_len
  if spec.causal:
    mask &= k_pos <= q_pos
  if spec.window is not None:
    mask &= (q_pos - spec.window < k_pos) | (k_pos < spec.sinks)
  mask = mask[None]
  if has_segments:
    # segment_ids are padded to the padded lengths; queries read theirs at key position q_pos.
    q_seg = jax.lax.dynamic_slice_in_dim(segment_ids, q_block * spec.block_q + offset, spec.block_q, axis=1)
    k_seg = jax.lax.dynamic_slice_in_dim(segment_ids, k_block * spec.block_k, spec.block_k, axis=1)
    mask = mask & (q_seg[:, :, None] == k_seg[:, None, :])
  return mask[:, None, None]


def _pad_to(x, length: int, axis: int = 1, value=0):
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


def _padded_inputs(spec: BlockSpec, q, k, v, segment_ids):
  """Pad T and S up to whole blocks; group query heads: q [B, Tp, Hkv, G, D]."""
  batch, _, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  q_pad = _round_up(spec.q_len, spec.block_q)
  k_pad = _round_up(spec.k_len, spec.block_k)
  q = _pad_to(q, q_pad).reshape(batch, q_pad, kv_heads, heads // kv_heads, head_dim)
  k, v = _pad_to(k, k_pad), _pad_to(v, k_pad)
  # Padded queries sit past S; give their segment ids room (their rows are dropped).
  segment_ids = _pad_to(segment_ids, max(k_pad, spec.k_len - spec.q_len + q_pad), value=-1)
  return q, k, v, segment_ids


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _attention(spec: BlockSpec, has_segments: bool, q, k, v, segment_ids):
  return _forward(spec, has_segments, q, k, v, segment_ids)[0]


def _slice_rows(x, block, size: int):
  return jax.lax.dynamic_slice_in_dim(x, block * size, size, axis=1)


def _update_rows(x, rows, block, size: int):
  return jax.lax.dynamic_update_slice_in_dim(x, rows, block * size, axis=1)


def _logits(spec: BlockSpec, has_segments, q_blk, k_blk, qi, kj, segment_ids):
  """float32 [B, Hkv, G, bq, bk] scaled logits and the mask of pair (qi, kj)."""
  scale = 1.0 / np.sqrt(q_blk.shape[-1])
  logits = jnp.einsum("BQKGD,BSKD->BKGQS", q_blk, k_blk, preferred_element_type=jnp.float32) * scale
  return logits, _block_mask(spec, has_segments, qi, kj, segment_ids)


def _forward(spec: BlockSpec, has_segments: bool, q, k, v, segment_ids):
  """Online softmax over the reachable block pairs; returns out and (residuals for the backward)."""
  batch, q_len, heads, head_dim = q.shape
  q_p, k_p, v_p, seg_p = _padded_inputs(spec, q, k, v, segment_ids)
  rows = q_p.shape[:4]  # [B, Tp, Hkv, G]
  pairs = block_pairs(spec)

  def step(carry, pair):
    acc, row_max, row_sum = carry
    # Tie the pair to traced data: else JAX's partial evaluation (a scanned, differentiated model) hoists the
    # pair-only mask out of this loop and stacks it for every pair, [P, B, Hkv, G, bq, bk] bools.
    pair, acc = jax.lax.optimization_barrier((pair, acc))
    qi, kj = pair[0], pair[1]
    q_blk = _slice_rows(q_p, qi, spec.block_q)
    k_blk, v_blk = _slice_rows(k_p, kj, spec.block_k), _slice_rows(v_p, kj, spec.block_k)
    logits, mask = _logits(spec, has_segments, q_blk, k_blk, qi, kj, seg_p)
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
  (acc, row_max, row_sum), _ = jax.lax.scan(step, init, pairs)
  seen = row_sum > 0
  out = jnp.where(seen[..., None], acc / jnp.where(seen, row_sum, 1.0)[..., None], 0.0)
  # +inf makes exp(logit - lse) exactly 0 in the backward for rows that saw no key.
  lse = jnp.where(seen, row_max + jnp.log(jnp.where(seen, row_sum, 1.0)), jnp.inf)
  out = out[:, :q_len].reshape(batch, q_len, heads, head_dim).astype(q.dtype)
  return out, (q, k, v, segment_ids, out, lse)


def _forward_rule(spec, has_segments, q, k, v, segment_ids):
  return _forward(spec, has_segments, q, k, v, segment_ids)


def _backward_rule(spec: BlockSpec, has_segments: bool, residuals, d_out):
  """FlashAttention-2 backward: recompute each reachable block's probabilities from the saved lse."""
  q, k, v, segment_ids, out, lse = residuals
  batch, q_len, heads, head_dim = q.shape
  q_p, k_p, v_p, seg_p = _padded_inputs(spec, q, k, v, segment_ids)
  kv_heads, group = q_p.shape[2], q_p.shape[3]
  grouped = (batch, q_len, kv_heads, group, head_dim)
  do_p = _pad_to(d_out.reshape(grouped), q_p.shape[1])
  # delta_i = sum_d dO_id O_id = sum_j P_ij dP_ij, the softmax Jacobian's diagonal term.
  delta = jnp.einsum("BTKGD,BTKGD->BTKG", d_out.reshape(grouped).astype(jnp.float32),
                     out.reshape(grouped).astype(jnp.float32))
  delta = _pad_to(delta, q_p.shape[1])
  scale = 1.0 / np.sqrt(head_dim)

  def step(carry, pair):
    dq, dk, dv = carry
    qi, kj = pair[0], pair[1]
    q_blk, do_blk = _slice_rows(q_p, qi, spec.block_q), _slice_rows(do_p, qi, spec.block_q)
    k_blk, v_blk = _slice_rows(k_p, kj, spec.block_k), _slice_rows(v_p, kj, spec.block_k)
    logits, mask = _logits(spec, has_segments, q_blk, k_blk, qi, kj, seg_p)
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
  (dq, dk, dv), _ = jax.lax.scan(step, init, block_pairs(spec))
  dq = dq[:, :q_len].reshape(q.shape).astype(q.dtype)
  dk, dv = dk[:, :spec.k_len].astype(k.dtype), dv[:, :spec.k_len].astype(v.dtype)
  return dq, dk, dv, None


_attention.defvjp(_forward_rule, _backward_rule)
