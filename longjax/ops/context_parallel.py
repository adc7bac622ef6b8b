"""Context parallelism: causal attention over sequence shards of a named mesh axis, with `jax.shard_map`.

`context_parallel_attention(q, k, v, *, axis_name, strategy, balanced, ...)`: q [B, T, H, D] and k, v
[B, T, Hkv, D] are sharded along T over `axis_name` (the other mesh axes stay automatic); two strategies:

  all_gather  gather K/V (key/value heads only) from every shard and attend with the local queries
              (MaxText's default; its residual is the gathered K/V, its backward a reduce-scatter);
  ring        pass K/V blocks around the ring with ppermute (Liu et al. 2023, Ring Attention), merging each
              step's partial result by its float32 log-sum-exp (the online softmax of FlashAttention over
              shards); the next block's ppermute is issued before this block's compute so that XLA can
              overlap them. Its custom VJP runs the ring again and sends dK/dV home with their blocks, so a
              device holds a few K/V blocks at a time (its own, this step's, the next), never all of them.

Layout: with `balanced` each of S shards holds chunk i and chunk 2S-1-i of 2S equal chunks (the dual-chunk,
"zigzag" layout of MaxText and Megatron-LM), so under a causal mask every shard does the same work;
`load_balance` / `unbalance` permute a length axis into and out of it (the training step permutes its batch
once and says so to the model, `Llama(...)(..., balanced=True)`, see longjax.train.step). Otherwise shard i holds
the contiguous chunk i.

Masking is by the global sequence index of each row (causal, window, sinks), plus segment ids: for packed
rows whose positions restart at each document this equals masking by positions and segments. Positions,
and so RoPE and the seq_len of dynamic methods, are applied by the caller on the whole (global) sequence.
The inner step is the blockwise kernel (`blockwise.indexed_attention`); which (query block, key block)
pairs each shard visits is worked out statically for every shard and picked by its axis index, so fully
masked blocks cost nothing, and tables are padded to one length with skipped pairs.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from longjax.ops import blockwise

STRATEGIES = ("all_gather", "ring")


def chunk_order(shards: int) -> np.ndarray:
  """int[2 * shards]: the chunk at each place of the balanced layout: 0, 2S-1, 1, 2S-2, ..."""
  return np.stack([np.arange(shards), 2 * shards - 1 - np.arange(shards)], axis=1).reshape(-1)


def _permute_chunks(x, order: np.ndarray, axis: int):
  shape = x.shape
  chunks = x.reshape(shape[:axis] + (len(order), shape[axis] // len(order)) + shape[axis + 1:])
  return jnp.take(chunks, order, axis=axis).reshape(shape)


def load_balance(x, shards: int, axis: int = 1):
  """x with its `axis` (length, divisible by 2 * shards) permuted into the balanced layout."""
  return _permute_chunks(x, chunk_order(shards), axis)


def unbalance(x, shards: int, axis: int = 1):
  """The inverse of `load_balance`: the balanced layout back to sequence order."""
  return _permute_chunks(x, np.argsort(chunk_order(shards)), axis)


def shard_indices(length: int, shards: int, balanced: bool) -> np.ndarray:
  """int32[shards, length // shards]: the global sequence index of each row of each shard."""
  index = np.arange(length, dtype=np.int32)
  if balanced:
    index = index.reshape(2 * shards, -1)[chunk_order(shards)]
  return index.reshape(shards, -1)


class Plan(NamedTuple):
  """Everything static about one call (hashable: it keys the cached tables and the ring's custom VJP)."""

  axis_name: str
  shards: int
  length: int  # global T
  balanced: bool
  block: int
  spec: blockwise.BlockSpec  # q_len and k_len of one shard's block


def _plan(axis_name, shards, length, balanced, causal, window, sinks, block_size) -> Plan:
  local = length // shards
  # Blocks never straddle two chunks of the layout, so that the tables skip whole blocks.
  block = math.gcd(block_size, local // 2 if balanced else local)
  spec = blockwise.BlockSpec(causal, window, sinks, local, local, block, block)
  return Plan(axis_name, shards, length, balanced, block, spec)


def _pairs(plan: Plan, q_index: np.ndarray, k_index: np.ndarray) -> np.ndarray:
  """int32[P, 2]: the block pairs of queries `q_index` and keys `k_index` that the mask reaches."""
  q_blocks, k_blocks = q_index.reshape(-1, plan.block), k_index.reshape(-1, plan.block)
  keep = blockwise.reachable(plan.spec, q_blocks.min(1)[:, None], q_blocks.max(1)[:, None],
                             k_blocks.min(1)[None, :], k_blocks.max(1)[None, :])
  return np.argwhere(keep).astype(np.int32)


def _padded_tables(lists: list[list[np.ndarray]], k_blocks: int) -> np.ndarray:
  """int32[len(lists), S, P, 2]: pair lists (per table, per shard) padded to the longest of all with skipped
  pairs (key block k_blocks, past the last)."""
  longest = max(1, max(len(pairs) for table in lists for pairs in table))
  skip = np.array([[0, k_blocks]], np.int32)
  return np.stack([np.stack([np.concatenate([pairs, np.repeat(skip, longest - len(pairs), axis=0)])
                             for pairs in table]) for table in lists])


@functools.lru_cache(maxsize=64)
def _tables(plan: Plan):
  """(indices [S, L], all_gather pairs [S, P, 2], ring pairs of step 0 [S, P0, 2] and of steps 1.. [S-1, S, P1, 2])."""
  shards = plan.shards
  index = shard_indices(plan.length, shards, plan.balanced)
  gathered = _padded_tables([[_pairs(plan, index[i], index.reshape(-1)) for i in range(shards)]],
                            plan.length // plan.block)[0]
  # Ring step s: shard i holds the K/V block of shard i - s. Step 0 (the diagonal) has its own table, so the
  # later steps, which share one compiled body, pad to their own longest list.
  k_blocks = index.shape[1] // plan.block
  steps = [[_pairs(plan, index[i], index[(i - s) % shards]) for i in range(shards)] for s in range(shards)]
  return index, gathered, _padded_tables(steps[:1], k_blocks)[0], _padded_tables(steps[1:], k_blocks)


def _all_gather_shard(plan: Plan, q, k, v, segments):
  index, pairs, _, _ = _tables(plan)
  me = jax.lax.axis_index(plan.axis_name)
  gather = lambda x: jax.lax.all_gather(x, plan.axis_name, axis=1, tiled=True)  # noqa: E731
  out, _ = blockwise.indexed_attention(
      q, gather(k), gather(v), jnp.asarray(index)[me], index.reshape(-1), causal=plan.spec.causal,
      window=plan.spec.window, sinks=plan.spec.sinks, q_segment_ids=segments,
      k_segment_ids=None if segments is None else gather(segments), pairs=jnp.asarray(pairs)[me],
      block_q=plan.block, block_k=plan.block)
  return out


def _shift(plan: Plan, tree):
  """Each shard's `tree` to the next shard of the ring (shard i receives shard i-1's)."""
  perm = [(i, (i + 1) % plan.shards) for i in range(plan.shards)]
  return jax.lax.ppermute(tree, plan.axis_name, perm)


def _step_masking(plan: Plan, step, me, q_segments, k_segments) -> blockwise.Masking:
  """The mask of ring step `step` (0, or traced inside the loop) on shard `me`."""
  index, _, first, later = _tables(plan)
  index = jnp.asarray(index)
  pairs = jnp.asarray(first)[me] if isinstance(step, int) and step == 0 else jnp.asarray(later)[step - 1, me]
  return blockwise.Masking(index[me], index[(me - step) % plan.shards], q_segments, k_segments, pairs)


def _around_the_ring(plan: Plan, block, carry, compute):
  """carry = compute(carry, block, step) for steps 0..S-1, where `block` is shard (me - step)'s; the shift that
  brings the next step's block is issued before this step's compute, so that the two can overlap. The middle
  steps share one scanned body; the first and last are peeled (no hop after the last)."""
  following = _shift(plan, block)
  carry = compute(carry, block, 0)

  def middle(state, step):
    carry, block = state
    following = _shift(plan, block)
    return (compute(carry, block, step), following), None

  if plan.shards > 2:
    (carry, following), _ = jax.lax.scan(middle, (carry, following), jnp.arange(1, plan.shards - 1))
  return compute(carry, following, plan.shards - 1)


def _merge(out, lse, part_out, part_lse):
  """Two partial softmax results over disjoint keys -> one; float32, rows with no key yet stay 0 / -inf."""
  new_lse = jnp.logaddexp(lse, part_lse)
  safe = jnp.where(jnp.isneginf(new_lse), 0.0, new_lse)
  out = out * jnp.exp(lse - safe)[..., None] + part_out * jnp.exp(part_lse - safe)[..., None]
  return out, new_lse


def _ring_forward(plan: Plan, q, k, v, segments):
  me = jax.lax.axis_index(plan.axis_name)

  def compute(carry, block, step):
    masking = _step_masking(plan, step, me, segments, block[2])
    return _merge(*carry, *blockwise.forward(plan.spec, q, block[0], block[1], masking))

  init = (jnp.zeros(q.shape, jnp.float32), jnp.full(q.shape[:3], -jnp.inf, jnp.float32))
  out, lse = _around_the_ring(plan, (k, v, segments), init, compute)
  out = out.astype(q.dtype)
  return out, (q, k, v, segments, out, lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(plan: Plan, q, k, v, segments):
  return _ring_forward(plan, q, k, v, segments)[0]


def _ring_backward(plan: Plan, residuals, d_out):
  """The ring again: each step's block gradients use the final out and lse; dK/dV travel with their block
  and take one more hop home after the last step."""
  q, k, v, segments, out, lse = residuals
  me = jax.lax.axis_index(plan.axis_name)

  def compute(carry, block, step):
    dq, dk, dv = carry
    masking = _step_masking(plan, step, me, segments, block[2])
    dq_part, dk_part, dv_part = blockwise.backward(plan.spec, q, block[0], block[1], masking, out, lse, d_out)
    return (dq + dq_part, *_shift(plan, (dk + dk_part, dv + dv_part)))

  init = (jnp.zeros(q.shape, jnp.float32), jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
  dq, dk, dv = _around_the_ring(plan, (k, v, segments), init, compute)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_ring.defvjp(_ring_forward, _ring_backward)


def context_parallel_attention(q, k, v, *, axis_name: str, strategy: str, balanced: bool, causal: bool = True,
                               window: int | None = None, sinks: int = 0, segment_ids: jax.Array | None = None,
                               block_size: int = blockwise.DEFAULT_BLOCK):
  """q [B, T, H, D], k/v [B, T, Hkv, D], segment_ids int32[B, T] or None, all in the layout -> [B, T, H, D].

  Runs under the current mesh; T must divide into the shards of `axis_name` (into twice as many chunks
  when `balanced`).
  """
  if strategy not in STRATEGIES:
    raise ValueError(f"context_parallel_attention: strategy={strategy!r}; allowed: {', '.join(STRATEGIES)}")
  shards = jax.sharding.get_abstract_mesh().shape[axis_name]
  length = q.shape[1]
  if length % (shards * (2 if balanced else 1)):
    raise ValueError(f"context_parallel_attention: length {length} does not split into "
                     f"{shards * (2 if balanced else 1)} chunks over {shards} shards")
  plan = _plan(axis_name, shards, length, balanced, causal, window, sinks, block_size)
  local = _ring if strategy == "ring" else _all_gather_shard
  sharded = PartitionSpec(None, axis_name)
  return jax.shard_map(functools.partial(local, plan), in_specs=(sharded, sharded, sharded, sharded),
                       out_specs=sharded, axis_names={axis_name}, check_vma=False)(q, k, v, segment_ids)
