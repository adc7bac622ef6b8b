"""Attention types, picked by `model.attention.type` from a registry: each owns its parameters and its state.

An attention type receives q, k, v projected and not yet rotated, and either no state (a
whole-sequence call: training, evaluation) or its cache (inference), and returns (out, state):

  full      causal attention; cache: K/V of every token up to max_length (`ops.KVCache`).
  s2        LongLoRA's shifted sparse attention in training (full at evaluation unless
            s2_at_eval); decodes with the full cache, as LongLoRA infers with full attention.
  sliding   a window of keys plus `sinks` first keys; cache: StreamingLLM's sinks + rolling window
            with positions inside the cache (`ops.SinkCache`), constant memory.
  infini    Infini-attention with its per-head gate; cache: the compressive memory plus the open
            segment (`ops.InfiniCache`), so streaming equals one long call.
  landmark  landmark attention (longjax.nn.landmark); cache: every block with its landmark key
            (`ops.LandmarkCache`), each head retrieving its top-k blocks per step.
  self_extend, dca, rerope
            training-free position remapping (`nn.remap`); cache: the full K/V cache, keys before RoPE.

With `attention.context_parallel` and a mesh whose sequence axis is > 1, the whole-sequence calls of
the types marked `sequence_parallel` (full, sliding) run `ops.context_parallel_attention` over that
axis; infini cannot (a sequential recurrence over segments), nor s2 (it trains on shifted groups; its
evaluation path is full's), and config validation says so.

In a cached call, `segment_ids` mark real tokens (non-zero; padding is 0, as in packed batches):
padding is neither cached nor counted, and each row's real tokens come first. Keys are cached
after RoPE when the positional method is static, and before it when the method is dynamic (its
frequencies move with the length; YaRN paper sec. 3.3), so that every step turns all keys with
the current frequencies.
"""

import dataclasses
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from longjax import ops, positional, sharding
from longjax.config import AttentionConfig, RopeConfig
from longjax.ops import context_parallel
from longjax.nn.landmark import landmark_apply, landmark_init_state


class AttentionInputs(NamedTuple):
  """q [B, T, H, D], k/v [B, T, Hkv, D] before RoPE; positions int32[B, T]; seq_len int32[] or per row [B]
  (the current total length, for dynamic positional methods); segment_ids int32[B, T] or None."""

  q: jax.Array
  k: jax.Array
  v: jax.Array
  positions: jax.Array
  seq_len: jax.Array
  segment_ids: jax.Array | None


@dataclasses.dataclass(frozen=True)
class AttentionType:
  """`apply(module, cfg, rope, inputs, state, train) -> (out [B, T, H, D], state)`, run inside the Attention
  module (so it may own parameters); `init_state(cfg, batch, max_length, kv_heads, head_dim, dtype) -> state`;
  `sequence_parallel`: its training call can run context-parallel (config.SEQUENCE_PARALLEL_TYPES)."""

  apply: Callable[..., tuple[jax.Array, Any]]
  init_state: Callable[..., Any]
  sequence_parallel: bool = False


def _frequencies(rope: RopeConfig, head_dim: int, seq_len) -> positional.Frequencies:
  if jnp.ndim(seq_len) == 1:
    return positional.frequencies_per_row(rope, head_dim, seq_len)
  return positional.frequencies(rope, head_dim, seq_len)


def _valid(x: AttentionInputs) -> jax.Array:
  """bool[B, T]: the tokens a cached call writes (segment id non-zero)."""
  if x.segment_ids is None:
    return jnp.ones(x.q.shape[:2], bool)
  return x.segment_ids != 0


def _rotated(rope, x: AttentionInputs):
  freqs = _frequencies(rope, x.q.shape[-1], x.seq_len)
  return freqs, positional.apply_rope(x.q, x.positions, freqs), positional.apply_rope(x.k, x.positions, freqs)


def _context_axis(cfg: AttentionConfig, length: int) -> str | None:
  """The mesh axis to run context-parallel over, or None: off, no sequence axis, or (contiguous layout only)
  a length the shards do not divide, which XLA's partitioner then handles (evaluation at odd lengths)."""
  axis = None if cfg.context_parallel == "none" else sharding.sequence_axis()
  if axis is None or (not context_parallel.is_balanced() and length % jax.sharding.get_abstract_mesh().shape[axis]):
    return None
  return axis


def _dense(cfg: AttentionConfig, q, k, v, segment_ids, *, window=None, sinks=0):
  segment_ids = None if cfg.cross_documents else segment_ids
  axis = _context_axis(cfg, q.shape[1])
  if axis is not None:
    return ops.context_parallel_attention(q, k, v, axis_name=axis, strategy=cfg.context_parallel,
                                          balanced=context_parallel.is_balanced(), window=window, sinks=sinks,
                                          segment_ids=segment_ids, block_size=cfg.kernel_block)
  return ops.attention(q, k, v, causal=True, impl=cfg.impl, window=window, sinks=sinks, segment_ids=segment_ids,
                       block_size=cfg.kernel_block)


def _cached_full(cfg: AttentionConfig, rope: RopeConfig, x: AttentionInputs, state: ops.KVCache):
  """Write the new tokens at each row's next slots, then attend over the filled cache."""
  dynamic = positional.is_dynamic(rope)
  freqs, q, k_rotated = _rotated(rope, x)
  valid = _valid(x)
  slots = state.length[:, None] + jnp.arange(x.q.shape[1], dtype=jnp.int32)
  slots = jnp.where(valid, slots, state.key.shape[2])  # padding goes nowhere
  key = ops.write_heads(state.key, slots, x.k if dynamic else k_rotated)
  value = ops.write_heads(state.value, slots, x.v)
  key_positions = ops.write_rows(state.positions, slots, x.positions)
  length = state.length + jnp.sum(valid, axis=1, dtype=jnp.int32)
  turn = dict(key_positions=key_positions, freqs=freqs) if dynamic else {}
  out = ops.cached_attention(q, key, value, q_offsets=state.length, kv_lengths=length, key_block=cfg.kernel_block,
                             **turn)
  return out, ops.KVCache(key, value, key_positions, length)


def _init_kv(cfg, batch, max_length, kv_heads, head_dim, dtype):
  if max_length > cfg.kernel_block:  # whole key blocks: the kernel then never pads (copies) the cache
    max_length = -(-max_length // cfg.kernel_block) * cfg.kernel_block
  return ops.init_kv_cache(batch, max_length, kv_heads, head_dim, dtype=dtype)


def _full(module, cfg, rope, x: AttentionInputs, state, train):
  del module, train
  if isinstance(state, ops.CompressedCache):  # KV-cache compression: the cache's policy (inference/kv_policies.py)
    return state.policy.attend(rope, x.q, x.k, x.v, x.positions, _valid(x), state)
  if state is not None:
    return _cached_full(cfg, rope, x, state)
  _, q, k = _rotated(rope, x)
  return _dense(cfg, q, k, x.v, x.segment_ids), None


def _s2(module, cfg, rope, x: AttentionInputs, state, train):
  if state is not None or not (train or cfg.s2_at_eval):
    return _full(module, cfg, rope, x, state, train)
  _, q, k = _rotated(rope, x)
  group_size = int(cfg.group_size_ratio * x.q.shape[1])
  return ops.s2_attention(q, k, x.v, group_size=group_size, impl=cfg.impl), None


def _sliding(module, cfg, rope, x: AttentionInputs, state, train):
  del module, train
  if state is not None:
    return ops.sink_cache_attention(x.q, x.k, x.v, state, _valid(x), window=cfg.window, sinks=cfg.sinks, rope=rope)
  _, q, k = _rotated(rope, x)
  return _dense(cfg, q, k, x.v, x.segment_ids, window=cfg.window, sinks=cfg.sinks), None


def _init_sinks(cfg, batch, max_length, kv_heads, head_dim, dtype):
  del max_length  # constant memory: sinks + window slots whatever the length
  return ops.init_sink_cache(batch, kv_heads, head_dim, window=cfg.window, sinks=cfg.sinks, dtype=dtype)


def _infini(module, cfg, rope, x: AttentionInputs, state, train):
  del train
  heads = x.q.shape[2]
  # One gate per head, initialised at 0 (an even mix of memory and local attention).
  gate = module.param("gate", nn.with_logical_partitioning(nn.initializers.zeros, ("heads",)), (heads,),
                      module.param_dtype)
  if state is not None:
    return ops.infini_cache_attention(x.q, x.k, x.v, gate, state, _valid(x), update=cfg.update, rope=rope)
  freqs = _frequencies(rope, x.q.shape[-1], x.seq_len)
  out, _ = ops.infini_attention(x.q, x.k, x.v, gate, segment_len=cfg.segment_len, update=cfg.update, freqs=freqs,
                                impl=cfg.impl)
  return out, None


def _init_infini(cfg, batch, max_length, kv_heads, head_dim, dtype):
  del max_length  # constant memory: the compressive memory and one segment
  return ops.init_infini_cache(batch, kv_heads, head_dim, head_dim, segment_len=cfg.segment_len, dtype=dtype)


def _landmark(module, cfg, rope, x: AttentionInputs, state, train):
  del module, train
  freqs = _frequencies(rope, x.q.shape[-1], x.seq_len)
  return landmark_apply(cfg, x.q, x.k, x.v, x.positions, x.segment_ids, freqs, state, _valid(x))

# nn.remap reads the helpers above (frequencies, valid tokens), so it is imported after them.
from longjax.nn.remap import remap_apply  # pylint: disable=wrong-import-position

ATTENTION_TYPES: dict[str, AttentionType] = {
    "full": AttentionType(_full, _init_kv, sequence_parallel=True),
    "s2": AttentionType(_s2, _init_kv),
    "sliding": AttentionType(_sliding, _init_sinks, sequence_parallel=True),
    "infini": AttentionType(_infini, _init_infini),
    "landmark": AttentionType(_landmark, landmark_init_state),
    "self_extend": AttentionType(remap_apply, _init_kv),
    "dca": AttentionType(remap_apply, _init_kv),
    "rerope": AttentionType(remap_apply, _init_kv),
}
