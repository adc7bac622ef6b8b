"""infini: Infini-attention with its per-head gate; cache: the compressive memory M float32[Hkv, D, D] and
normalizer z float32[Hkv, D] plus the open segment's K/V (`ops.InfiniCache`), so streaming equals one long call."""

import flax.linen as nn

from longjax import ops
from longjax.config import InfiniConfig
from longjax.nn.attention.common import AttentionInputs, AttentionType, frequencies, frequencies_at, valid_tokens

_FLOAT32 = 4


def apply(module, cfg, rope, x: AttentionInputs, state, train):
  del train
  heads = x.q.shape[2]
  # One gate per head, initialised at 0 (an even mix of memory and local attention).
  gate = module.param("gate", nn.with_logical_partitioning(nn.initializers.zeros, ("heads",)), (heads,),
                      module.param_dtype)
  if state is not None:
    return ops.infini_cache_attention(x.q, x.k, x.v, gate, state, valid_tokens(x), update=cfg.infini.update,
                                      frequencies_at=frequencies_at(rope, x.q.shape[-1]))
  freqs = frequencies(rope, x.q.shape[-1], x.seq_len)
  out, _ = ops.infini_attention(x.q, x.k, x.v, gate, segment_len=cfg.infini.segment_len, update=cfg.infini.update,
                                freqs=freqs, impl=cfg.impl)
  return out, None


def init_state(cfg, batch, max_length, kv_heads, head_dim, dtype):
  del max_length  # constant memory: the compressive memory and one segment
  return ops.init_infini_cache(batch, kv_heads, head_dim, head_dim, segment_len=cfg.infini.segment_len, dtype=dtype)


def cached_tokens(cfg, length: int) -> int:
  return min(length, cfg.infini.segment_len)


def state_bytes(cfg, kv_heads: int, head_dim: int) -> int:
  """M [Hkv, D, D] and z [Hkv, D], float32."""
  del cfg
  return kv_heads * head_dim * (head_dim + 1) * _FLOAT32


INFINI = AttentionType(apply, init_state, cached_tokens=cached_tokens, state_bytes=state_bytes,
                       state_follows_heads=True, config=InfiniConfig)
