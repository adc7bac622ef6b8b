"""Multi-head attention with grouped-query heads, a pluggable positional method and attention type."""

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from longjax.config import AttentionConfig, LoraConfig, RopeConfig
from longjax.nn.attention.common import AttentionInputs
from longjax.nn.attention.registry import ATTENTION_TYPES
from longjax.nn.layers import Dense, Dtype
from longjax.ops import logn_scale


class Attention(nn.Module):
  """(x [B, T, E], positions, seq_len, segment_ids, state) -> ([B, T, E], state).

  `attention.type` picks the attention op and its state from `ATTENTION_TYPES`; `state` None is a
  whole-sequence call. `train` selects LongLoRA's behaviour for type s2: shifted sparse attention
  in training, full attention at evaluation unless `attention.s2.at_eval`.
  """

  num_heads: int
  num_kv_heads: int
  head_dim: int
  hidden_size: int
  rope: RopeConfig
  attention: AttentionConfig
  lora: LoraConfig
  init_std: float = 0.02
  train: bool = False
  balanced: bool = False  # the length axis is in context parallelism's balanced layout (AttentionInputs.balanced)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _proj(self, name, features, in_axes, out_axes):
    rank = self.lora.rank if name in self.lora.targets else 0
    scale = self.lora.scale if rank else 1.0
    return Dense(features=features, in_axes=in_axes, out_axes=out_axes, init_std=self.init_std, lora_rank=rank,
                 lora_scale=scale, dtype=self.dtype, param_dtype=self.param_dtype, name=f"{name}_proj")

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, seq_len: jax.Array, segment_ids: jax.Array | None = None,
               state=None):
    heads, kv_heads, head_dim = self.num_heads, self.num_kv_heads, self.head_dim
    q = self._proj("q", (heads, head_dim), ("embed",), ("heads", "head_dim"))(x)
    k = self._proj("k", (kv_heads, head_dim), ("embed",), ("kv_heads", "head_dim"))(x)
    v = self._proj("v", (kv_heads, head_dim), ("embed",), ("kv_heads", "head_dim"))(x)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
    k = nn.with_logical_constraint(k, ("batch", "length", "kv_heads", "head_dim"))
    if self.attention.logn_length:  # log-n scaling: a scale on q is a scale on its logits, before or after RoPE
      q = q * logn_scale(positions, self.attention.logn_length)[..., None, None].astype(q.dtype)
    inputs = AttentionInputs(q, k, v, positions, seq_len, segment_ids, self.balanced)
    out, state = ATTENTION_TYPES[self.attention.type].apply(self, self.attention, self.rope, inputs, state,
                                                            self.train)
    out = checkpoint_name(out, "attention_out")
    return self._proj("o", (self.hidden_size,), ("heads", "head_dim"), ("embed",))(out), state
