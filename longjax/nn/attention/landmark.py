"""landmark: landmark attention (Mohtashami & Jaggi 2023); cache: every block with its landmark key
(`ops.LandmarkCache`), each head retrieving its top-k blocks per step.

Landmarks are not found by token id inside the model: packing (`longjax.data.insert_landmarks`) and generation put
the landmark token (`attention.landmark.id`) after every `landmark.block` ordinary tokens of a document (this
type's `inserted_tokens`), so a landmark sits exactly where position % (block + 1) == block, and
the attention reads that from the positions it already has (Llama.apply keeps its signature). Positions count
landmarks, as in the reference. A cached call needs positions = cache slots (the default: each row's next
positions from 0).
"""

import jax.numpy as jnp

from longjax import ops, positional
from longjax.config import LandmarkConfig
from longjax.nn.attention.common import AttentionInputs, AttentionType, InsertedTokens, frequencies, valid_tokens


def apply(module, cfg, rope, x: AttentionInputs, state, train):
  del module, train
  freqs = frequencies(rope, x.q.shape[-1], x.seq_len)
  block = cfg.landmark.block + 1
  valid = valid_tokens(x)
  if state is not None:
    return ops.landmark_cache_attention(x.q, x.k, x.v, state, valid, block=block, topk=cfg.landmark.topk,
                                        freqs=freqs)
  q, k = positional.apply_rope(x.q, x.positions, freqs), positional.apply_rope(x.k, x.positions, freqs)
  is_landmark = ops.is_landmark_position(x.positions, block) & valid
  out = ops.landmark_attention(q, k, x.v, is_landmark, segment_ids=None if cfg.cross_documents else x.segment_ids,
                               query_block=cfg.kernel_block)
  return out, None


def init_state(cfg, batch: int, max_length: int, kv_heads: int, head_dim: int, dtype):
  """Every block with its landmark key, max_length rounded up to whole blocks."""
  return ops.init_landmark_cache(batch, max_length, kv_heads, head_dim, block=cfg.landmark.block + 1,
                                 dtype=jnp.dtype(dtype))


def inserted_tokens(cfg) -> InsertedTokens:
  return InsertedTokens(cfg.landmark.block, cfg.landmark.id)


LANDMARK = AttentionType(apply, init_state, inserted_tokens=inserted_tokens, config=LandmarkConfig)
