"""sliding: a window of keys plus `sinks` first keys; cache: StreamingLLM's sinks + rolling window with positions
inside the cache (`ops.SinkCache`), constant memory: min(length, sinks + window) tokens of K/V."""

from longjax import ops
from longjax.config import SlidingConfig
from longjax.nn.attention.common import AttentionInputs, AttentionType, dense, frequencies_at, rotated, valid_tokens


def apply(module, cfg, rope, x: AttentionInputs, state, train):
  del module, train
  if state is not None:
    return ops.sink_cache_attention(x.q, x.k, x.v, state, valid_tokens(x), window=cfg.sliding.window,
                                    sinks=cfg.sliding.sinks, frequencies_at=frequencies_at(rope, x.q.shape[-1]))
  _, q, k = rotated(rope, x)
  return dense(cfg, q, k, x.v, x.segment_ids, balanced=x.balanced, window=cfg.sliding.window,
               sinks=cfg.sliding.sinks), None


def init_state(cfg, batch, max_length, kv_heads, head_dim, dtype):
  del max_length  # constant memory: sinks + window slots whatever the length
  return ops.init_sink_cache(batch, kv_heads, head_dim, window=cfg.sliding.window, sinks=cfg.sliding.sinks, dtype=dtype)


def cached_tokens(cfg, length: int) -> int:
  return min(length, cfg.sliding.sinks + cfg.sliding.window)


SLIDING = AttentionType(apply, init_state, cached_tokens=cached_tokens, sequence_parallel=True, config=SlidingConfig)
