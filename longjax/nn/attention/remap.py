"""What the position-remapping types (self_extend, dca, rerope; `longjax.ops.remap`) share: one apply.

Training-free: they add no parameters, so any checkpoint evaluates with them. A whole-sequence call
runs `ops.remap_whole_sequence` (query and key blocks, causal pairs only); a cached call keeps keys
before RoPE in the full K/V cache (`ops.KVCache`, with each key's position), because every new query
gives the old keys new positions (Self-Extend's groups and DCA's chunks are relative to the query),
then runs `ops.remap_attention` over the filled part of the cache.
"""

from typing import Callable

from longjax import ops
from longjax.config import AttentionConfig
from longjax.nn.attention.common import AttentionInputs, AttentionType, append_kv, frequencies, init_kv


def remapping_type(remap_of: Callable[[AttentionConfig], ops.Remap], config: type) -> AttentionType:
  """The AttentionType of a remapping method, `remap_of(cfg)` giving its `ops.Remap`, `config` its sub-config."""

  def apply(module, cfg, rope, x: AttentionInputs, state, train):
    del module, train
    freqs = frequencies(rope, x.q.shape[-1], x.seq_len)
    remap = remap_of(cfg)
    if state is None:  # blocks of the whole-sequence kernel's own measured size (as impl='auto' gives flash)
      return ops.remap_whole_sequence(x.q, x.k, x.v, positions=x.positions, freqs=freqs, remap=remap), None
    state, slots = append_kv(state, x, x.k)
    out = ops.remap_attention(x.q, state.key, state.value, q_positions=x.positions, k_positions=state.positions,
                              freqs=freqs, remap=remap, q_slots=slots, kv_lengths=state.length,
                              block_size=cfg.kernel_block)
    return out, state

  return AttentionType(apply, init_kv, config=config)
