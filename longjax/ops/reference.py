"""The definition every attention kernel is checked against: the boolean mask and a materialized softmax.

Shapes: q [B, T, H, D]; k, v [B, S, Hkv, D] with H % Hkv == 0; scale 1/sqrt(D).
When S > T the queries are the last T positions (a query at row t sits at key
position S - T + t), which is what a KV cache needs.
"""

import jax
import jax.numpy as jnp


def attention_mask(q_len: int, k_len: int, *, causal: bool = True, window: int | None = None, sinks: int = 0,
                   segment_ids: jax.Array | None = None) -> jax.Array:
  """bool[B or 1, 1, T, S]: True where query i may attend to key j.

  causal: j <= i; window: i - window < j (plus the first `sinks` keys); segment_ids int[B, S]:
  equal ids only (queries take the last T ids).
  """
  q_pos = jnp.arange(q_len)[:, None] + (k_len - q_len)
  k_pos = jnp.arange(k_len)[None, :]
  mask = jnp.ones((q_len, k_len), bool)
  if causal:
    mask &= k_pos <= q_pos
  if window is not None:
    mask &= (q_pos - window < k_pos) | (k_pos < sinks)
  mask = mask[None, None]
  if segment_ids is not None:
    q_seg = segment_ids[:, k_len - q_len:]
    mask = mask & (q_seg[:, None, :, None] == segment_ids[:, None, None, :])
  return mask


def naive_attention(q, k, v, mask):
  """The reference: materialized float32 softmax over [B, H, T, S] logits; rows with no key give 0.

  mask: bool broadcastable to [B, H, T, S]. v may have its own head_dim.
  """
  heads, kv_heads = q.shape[2], k.shape[2]
  k = jnp.repeat(k, heads // kv_heads, axis=2)
  v = jnp.repeat(v, heads // kv_heads, axis=2)
  logits = jnp.einsum("BTHD,BSHD->BHTS", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(q.shape[-1])
  logits = jnp.where(mask, logits, -jnp.inf)
  any_key = jnp.any(mask, axis=-1, keepdims=True)
  probs = jax.nn.softmax(jnp.where(any_key, logits, 0.0), axis=-1) * any_key
  return jnp.einsum("BHTS,BSHE->BTHE", probs.astype(v.dtype), v).astype(q.dtype)
