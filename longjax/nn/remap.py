"""Attention types that remap positions inside attention: self_extend, dca, rerope (see `longjax.ops.remap`).

Training-free: they add no parameters, so any checkpoint evaluates with them. A whole-sequence call
runs `ops.remap_whole_sequence` (query and key blocks, causal pairs only); a cached call keeps keys
before RoPE in the full K/V cache (`ops.KVCache`, with each key's position), because every new query
gives the old keys new positions (Self-Extend's groups and DCA's chunks are relative to the query),
then runs `ops.remap_attention` over the filled part of the cache.
"""

import jax.numpy as jnp

from longjax import ops
from longjax.config import AttentionConfig
from longjax.nn.attention_types import AttentionInputs, _frequencies, _valid


def _remap(cfg: AttentionConfig) -> ops.Remap:
  if cfg.type == "self_extend":
    return ops.self_extend_remap(cfg.group_size, cfg.window)
  if cfg.type == "dca":
    return ops.dca_remap(cfg.chunk_size, cfg.local_window)
  return ops.rerope_remap(cfg.window)


def remap_apply(module, cfg: AttentionConfig, rope, x: AttentionInputs, state, train):
  """The `AttentionType.apply` of self_extend, dca and rerope."""
  del module, train
  freqs = _frequencies(rope, x.q.shape[-1], x.seq_len)
  remap = _remap(cfg)
  if state is None:  # blocks of the whole-sequence kernel's own measured size (as impl='auto' gives flash)
    return ops.remap_whole_sequence(x.q, x.k, x.v, positions=x.positions, freqs=freqs, remap=remap), None
  valid = _valid(x)
  slots = state.length[:, None] + jnp.arange(x.q.shape[1], dtype=jnp.int32)
  write = jnp.where(valid, slots, state.key.shape[2])  # padding goes nowhere
  key = ops.write_heads(state.key, write, x.k)
  value = ops.write_heads(state.value, write, x.v)
  key_positions = ops.write_rows(state.positions, write, x.positions)
  length = state.length + jnp.sum(valid, axis=1, dtype=jnp.int32)
  out = ops.remap_attention(x.q, key, value, q_positions=x.positions, k_positions=key_positions, freqs=freqs,
                            remap=remap, q_slots=slots, kv_lengths=length, block_size=cfg.kernel_block)
  return out, ops.KVCache(key, value, key_positions, length)
