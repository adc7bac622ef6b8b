"""What the attention types share: their inputs, the registry entry's shape, KV append, dense dispatch.

An attention type receives q, k, v projected and not yet rotated, and either no state (a
whole-sequence call: training, evaluation) or its cache (inference), and returns (out, state).

In a cached call, `segment_ids` mark real tokens (non-zero; padding is 0, as in packed batches):
padding is neither cached nor counted, and each row's real tokens come first.
"""

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from longjax import ops, positional, sharding
from longjax.config import AttentionConfig, RopeConfig


class AttentionInputs(NamedTuple):
  """q [B, T, H, D], k/v [B, T, Hkv, D] before RoPE; positions int32[B, T]; seq_len int32[] or per row [B]
  (the current total length, for dynamic positional methods); segment_ids int32[B, T] or None; balanced: T is in
  context parallelism's balanced layout (`ops.context_parallel.load_balance`), not in sequence order."""

  q: jax.Array
  k: jax.Array
  v: jax.Array
  positions: jax.Array
  seq_len: jax.Array
  segment_ids: jax.Array | None
  balanced: bool = False


class InsertedTokens(NamedTuple):
  """A reserved token `token_id` placed after every `every` ordinary tokens of a document, by packing in training
  and by generation (prompts and each decode step); the model reads where they sit from positions."""

  every: int
  token_id: int


def _no_inserted_tokens(cfg: AttentionConfig) -> None:
  del cfg


def _all_tokens(cfg: AttentionConfig, length: int) -> int:
  del cfg
  return length


def _no_recurrent_state(cfg: AttentionConfig, kv_heads: int, head_dim: int) -> int:
  del cfg, kv_heads, head_dim
  return 0


def _not_plain(cfg: AttentionConfig) -> bool:
  del cfg
  return False


def _any_length(cfg: AttentionConfig, length: int) -> None:
  del cfg, length


@dataclasses.dataclass(frozen=True)
class AttentionType:
  """One attention type: everything the model, the cache calculator, packing and generation need to know of it.

  apply(module, cfg, rope, inputs, state, train) -> (out [B, T, H, D], state): run inside the Attention module
      (so it may own parameters); state None is a whole-sequence call, else the cached (decode) step.
  init_state(cfg, batch, max_length, kv_heads, head_dim, dtype) -> its empty cache (with `length` int32[B]).
  cached_tokens(cfg, length) -> int: K/V slots one layer holds after `length` tokens (formula count).
  state_bytes(cfg, kv_heads, head_dim) -> int: one layer's constant float32 recurrent state, one batch row.
  inserted_tokens(cfg) -> InsertedTokens | None: tokens packing and generation add (landmark's), else None.
  evaluates_plain(cfg) -> bool: whether evaluation and generation run plain causal attention (what a
      transformers LlamaForCausalLM computes, so an export keeps the model's behaviour).
  length_problem(cfg, length) -> str | None: why one whole-sequence evaluation forward of `length` tokens cannot
      run (a clause naming the keys and what is allowed), or None when it can.
  compressible: its decode step hands an `ops.CompressedCache` to the cache's policy (KV-cache compression,
      `longjax.inference.kv_policies`).
  sequence_parallel: its training call can run context-parallel (config.SEQUENCE_PARALLEL_TYPES).
  state_follows_heads: its recurrent state is per KV head, so a tensor-parallel mesh cuts it as it cuts K/V.
  config: its sub-config's class (`model.attention.<type>`, longjax.config.attention.SUB_CONFIGS), which validates
      its own keys; None for a type without keys of its own.
  """

  apply: Callable[..., tuple[jax.Array, Any]]
  init_state: Callable[..., Any]
  cached_tokens: Callable[[AttentionConfig, int], int] = _all_tokens
  state_bytes: Callable[[AttentionConfig, int, int], int] = _no_recurrent_state
  inserted_tokens: Callable[[AttentionConfig], InsertedTokens | None] = _no_inserted_tokens
  evaluates_plain: Callable[[AttentionConfig], bool] = _not_plain
  length_problem: Callable[[AttentionConfig, int], str | None] = _any_length
  sequence_parallel: bool = False
  compressible: bool = False
  state_follows_heads: bool = False
  config: type | None = None


def frequencies(rope: RopeConfig, head_dim: int, seq_len) -> positional.Frequencies:
  """The positional method's frequencies at the current length: one set, or one per row when seq_len is [B]."""
  if jnp.ndim(seq_len) == 1:
    return positional.frequencies_per_row(rope, head_dim, seq_len)
  return positional.frequencies(rope, head_dim, seq_len)


def frequencies_at(rope: RopeConfig, head_dim: int) -> Callable[[jax.Array], positional.Frequencies]:
  """lengths int32[B] -> each row's frequencies at its length: what the streaming ops (`ops.sink_cache_attention`,
  `ops.infini_cache_attention`) turn q and k with at each step."""
  return functools.partial(positional.frequencies_per_row, rope, head_dim)


def valid_tokens(x: AttentionInputs) -> jax.Array:
  """bool[B, T]: the tokens a cached call writes (segment id non-zero)."""
  if x.segment_ids is None:
    return jnp.ones(x.q.shape[:2], bool)
  return x.segment_ids != 0


def rotated(rope: RopeConfig, x: AttentionInputs):
  """(freqs, q, k) with q and k turned by RoPE at their positions."""
  freqs = frequencies(rope, x.q.shape[-1], x.seq_len)
  return freqs, positional.apply_rope(x.q, x.positions, freqs), positional.apply_rope(x.k, x.positions, freqs)


def _context_axis(cfg: AttentionConfig, length: int, balanced: bool) -> str | None:
  """The mesh axis to run context-parallel over, or None: off, no sequence axis, or (contiguous layout only)
  a length the shards do not divide, which XLA's partitioner then handles (evaluation at odd lengths)."""
  axis = None if cfg.context_parallel == "none" else sharding.sequence_axis()
  if axis is None or (not balanced and length % jax.sharding.get_abstract_mesh().shape[axis]):
    return None
  return axis


def dense(cfg: AttentionConfig, q, k, v, segment_ids, *, balanced: bool = False, window=None, sinks=0):
  """Causal attention over a whole sequence (rotated q, k), context-parallel when configured and a mesh cuts it;
  `balanced`: the length axis is in the balanced layout (`AttentionInputs.balanced`)."""
  segment_ids = None if cfg.cross_documents else segment_ids
  axis = _context_axis(cfg, q.shape[1], balanced)
  if axis is not None:
    return ops.context_parallel_attention(q, k, v, axis_name=axis, strategy=cfg.context_parallel,
                                          balanced=balanced, window=window, sinks=sinks,
                                          segment_ids=segment_ids, block_size=cfg.kernel_block)
  return ops.attention(q, k, v, causal=True, impl=cfg.impl, window=window, sinks=sinks, segment_ids=segment_ids,
                       block_size=cfg.kernel_block)


def append_kv(state: ops.KVCache, x: AttentionInputs, key: jax.Array) -> tuple[ops.KVCache, jax.Array]:
  """(the cache with `key` [B, T, Hkv, D], x.v and x.positions written at each row's next slots, the slots int32[B, T]
  the new tokens take); padding tokens are neither written nor counted."""
  valid = valid_tokens(x)
  slots = state.length[:, None] + jnp.arange(x.q.shape[1], dtype=jnp.int32)
  write = jnp.where(valid, slots, state.key.shape[2])  # padding goes nowhere
  cache = ops.KVCache(ops.write_heads(state.key, write, key), ops.write_heads(state.value, write, x.v),
                      ops.write_rows(state.positions, write, x.positions),
                      state.length + jnp.sum(valid, axis=1, dtype=jnp.int32))
  return cache, slots


def init_kv(cfg: AttentionConfig, batch, max_length, kv_heads, head_dim, dtype) -> ops.KVCache:
  """The full K/V cache (`ops.KVCache`), max_length rounded up to whole kernel blocks."""
  if max_length > cfg.kernel_block:  # whole key blocks: the kernel then never pads (copies) the cache
    max_length = ops.round_up(max_length, cfg.kernel_block)
  return ops.init_kv_cache(batch, max_length, kv_heads, head_dim, dtype=dtype)
