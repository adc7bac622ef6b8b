"""The landmark attention type (Mohtashami & Jaggi 2023): which tokens are landmarks, and its two paths.

Landmarks are not found by token id inside the model: packing (`longjax.data.insert_landmarks`) and generation put
the landmark token (`attention.landmark_id`) after every `landmark_block` ordinary tokens of a document, so a
landmark sits exactly where position % (landmark_block + 1) == landmark_block, and the attention reads that from
the positions it already has (Llama.apply keeps its signature). Positions count landmarks, as in the reference.
A cached call needs positions = cache slots (the default: each row's next positions from 0).
"""

import jax
import jax.numpy as jnp

from longjax import ops, positional
from longjax.config import AttentionConfig, ModelConfig


def landmark_spec(config: ModelConfig) -> tuple[int, int] | None:
  """(landmark_block, landmark_id) when the model uses landmark attention, else None."""
  attention = config.attention
  return (attention.landmark_block, attention.landmark_id) if attention.type == "landmark" else None


def landmark_apply(cfg: AttentionConfig, q, k, v, positions, segment_ids, freqs: positional.Frequencies, state,
                   valid) -> tuple[jax.Array, ops.LandmarkCache | None]:
  """q [B, T, H, D], k/v [B, T, Hkv, D] before RoPE -> (out [B, T, H, D], state); state None: a whole sequence."""
  block = cfg.landmark_block + 1
  if state is not None:
    return ops.landmark_cache_attention(q, k, v, state, valid, block=block, topk=cfg.landmark_topk, freqs=freqs)
  q, k = positional.apply_rope(q, positions, freqs), positional.apply_rope(k, positions, freqs)
  is_landmark = ops.is_landmark_position(positions, block) & valid
  out = ops.landmark_attention(q, k, v, is_landmark, segment_ids=None if cfg.cross_documents else segment_ids,
                               query_block=cfg.kernel_block)
  return out, None


def landmark_init_state(cfg: AttentionConfig, batch: int, max_length: int, kv_heads: int, head_dim: int, dtype):
  """Every block with its landmark key, max_length rounded up to whole blocks."""
  return ops.init_landmark_cache(batch, max_length, kv_heads, head_dim, block=cfg.landmark_block + 1,
                                 dtype=jnp.dtype(dtype))
