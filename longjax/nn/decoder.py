"""The LLaMA decoder block (Touvron et al. 2023): pre-norm GQA attention and SwiGLU, with a per-layer cache."""

import flax.linen as nn
import jax.numpy as jnp

from longjax.config import ModelConfig
from longjax.nn.attention import ATTENTION_TYPES, Attention
from longjax.nn.cache_size import LayerCacheFormula
from longjax.nn.layers import MLP, RMSNorm, normal_init


class DecoderBlock(nn.Module):
  """(x [B, T, E], positions, seq_len, segment_ids, state) -> (x, state): x + attn(norm(x)), then + mlp(norm(.)).

  `state` is this layer's attention cache (None for a whole-sequence call).
  """

  config: ModelConfig
  train: bool = False
  balanced: bool = False  # the length axis is in context parallelism's balanced layout (Llama's `balanced`)

  @nn.compact
  def __call__(self, x, positions, seq_len, segment_ids, state=None):
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    lora = cfg.lora
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    h = RMSNorm(eps=cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype, name="input_norm")(x)
    h, state = Attention(num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.resolved_head_dim,
                         hidden_size=cfg.hidden_size, rope=cfg.rope, attention=cfg.attention, lora=lora,
                         init_std=cfg.initializer_range, train=self.train, balanced=self.balanced, dtype=dtype,
                         param_dtype=param_dtype, name="attention")(h, positions, seq_len, segment_ids, state)
    x = x + h
    h = RMSNorm(eps=cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype, name="post_attention_norm")(x)
    h = MLP(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size, init_std=cfg.initializer_range,
            lora_rank=lora.rank, lora_scale=lora.scale if lora.enabled else 1.0,
            lora_targets=lora.targets if lora.enabled else (), dtype=dtype, param_dtype=param_dtype, name="mlp")(h)
    return x + h, state

  @staticmethod
  def init_state(config: ModelConfig, batch: int, max_length: int, dtype):
    """One layer's empty cache: the attention type's state (longjax.nn.attention)."""
    return ATTENTION_TYPES[config.attention.type].init_state(config.attention, batch, max_length,
                                                             config.num_kv_heads, config.resolved_head_dim, dtype)

  @staticmethod
  def cache_formula(config: ModelConfig, length: int) -> LayerCacheFormula:
    """What one layer caches after `length` tokens: its attention type's K/V and state."""
    entry, attention = ATTENTION_TYPES[config.attention.type], config.attention
    kv_heads, head_dim = config.num_kv_heads, config.resolved_head_dim
    return LayerCacheFormula(entry.cached_tokens(attention, length), 2 * kv_heads * head_dim,
                             entry.state_bytes(attention, kv_heads, head_dim), kv_heads, entry.state_follows_heads, 0)

  @staticmethod
  def embedding_init(config: ModelConfig):
    return normal_init(config.initializer_range, ("vocab", "embed"))

  @staticmethod
  def final_norm(config: ModelConfig, x, valid, state):
    """The norm before the head, called inside the model: (x, valid bool[B, T] or None, state) -> (x, state)."""
    del valid, state
    dtype, param_dtype = jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)
    return RMSNorm(eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype, name="norm")(x), None

  @staticmethod
  def init_final_state(config: ModelConfig, batch: int):
    del config, batch
    return None
