"""Multi-head attention with grouped-query heads, a pluggable positional method and attention type."""

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from longjax import ops, positional
from longjax.config import AttentionConfig, LoraConfig, RopeConfig
from longjax.nn.layers import Dense, Dtype


class Attention(nn.Module):
  """x [B, T, E] -> [B, T, E]; RoPE on q and k; `attention.type` picks the attention op.

  `train` selects LongLoRA's behaviour for type s2: shifted sparse attention in
  training, full attention at evaluation unless `attention.s2_at_eval`.
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
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _proj(self, name, features, in_axes, out_axes):
    rank = self.lora.rank if name in self.lora.targets else 0
    scale = self.lora.scale if rank else 1.0
    return Dense(features, in_axes, out_axes, self.init_std, rank, scale, self.dtype, self.param_dtype,
                 name=f"{name}_proj")

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, seq_len: jax.Array,
               segment_ids: jax.Array | None = None) -> jax.Array:
    heads, kv_heads, head_dim = self.num_heads, self.num_kv_heads, self.head_dim
    q = self._proj("q", (heads, head_dim), ("embed",), ("heads", "head_dim"))(x)
    k = self._proj("k", (kv_heads, head_dim), ("embed",), ("kv_heads", "head_dim"))(x)
    v = self._proj("v", (kv_heads, head_dim), ("embed",), ("kv_heads", "head_dim"))(x)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
    k = nn.with_logical_constraint(k, ("batch", "length", "kv_heads", "head_dim"))
    freqs = positional.frequencies(self.rope, head_dim, seq_len)
    cfg = self.attention
    if cfg.type == "infini":
      gate = self.param("gate", nn.with_logical_partitioning(nn.initializers.zeros, ("heads",)), (heads,),
                        self.param_dtype)
      out, _ = ops.infini_attention(q, k, v, gate, segment_len=cfg.segment_len, update=cfg.update, freqs=freqs,
                                    impl=cfg.impl)
    else:
      q = positional.apply_rope(q, positions, freqs)
      k = positional.apply_rope(k, positions, freqs)
      if cfg.type == "s2" and (self.train or cfg.s2_at_eval):
        out = ops.s2_attention(q, k, v, group_size=int(cfg.group_size_ratio * x.shape[1]), impl=cfg.impl)
      else:
        window = cfg.window if cfg.type == "sliding" else None
        sinks = cfg.sinks if cfg.type == "sliding" else 0
        out = ops.attention(q, k, v, causal=True, impl=cfg.impl, window=window, sinks=sinks,
                            segment_ids=None if cfg.cross_documents else segment_ids, block_size=cfg.block_size)
    out = checkpoint_name(out, "attention_out")
    return self._proj("o", (self.hidden_size,), ("heads", "head_dim"), ("embed",))(out)
