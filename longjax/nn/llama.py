"""The LLaMA decoder (Touvron et al. 2023): pre-norm blocks of GQA attention and SwiGLU, tied or untied head."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from longjax.config import ModelConfig
from longjax.nn.attention import Attention
from longjax.nn.layers import MLP, RMSNorm, normal_init

# Names of jax.checkpoint policies selectable by `model.remat_policy`; `none` disables remat.
REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attention_out": jax.checkpoint_policies.save_only_these_names("attention_out"),
}


class DecoderBlock(nn.Module):
  """x + attn(norm(x)), then + mlp(norm(.)); x [B, T, E]."""

  config: ModelConfig
  train: bool = False

  @nn.compact
  def __call__(self, x, positions, seq_len, segment_ids):
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    lora = cfg.lora
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    h = RMSNorm(cfg.rms_norm_eps, dtype, param_dtype, name="input_norm")(x)
    h = Attention(cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim, cfg.hidden_size, cfg.rope,
                  cfg.attention, lora, cfg.initializer_range, self.train, dtype, param_dtype,
                  name="attention")(h, positions, seq_len, segment_ids)
    x = x + h
    h = RMSNorm(cfg.rms_norm_eps, dtype, param_dtype, name="post_attention_norm")(x)
    h = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.initializer_range, lora.rank,
            lora.scale if lora.enabled else 1.0, lora.targets if lora.enabled else (), dtype, param_dtype,
            name="mlp")(h)
    return x + h


class _ScanBlock(DecoderBlock):
  """DecoderBlock in nn.scan's (carry, out) form."""

  @nn.compact
  def __call__(self, x, positions, seq_len, segment_ids):
    return super().__call__(x, positions, seq_len, segment_ids), None


class Llama(nn.Module):
  """tokens int32[B, T] -> float32 logits [B, T, vocab].

  positions int32[B, T] default to 0..T-1. `seq_len`, the current total length
  that dynamic positional methods read, defaults to max(positions) + 1 (as
  transformers does); pass it when the buffer is padded beyond the true length.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens, positions=None, segment_ids=None, *, seq_len=None, train: bool = False):
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    if seq_len is None:
      seq_len = jnp.max(positions) + 1
    seq_len = jnp.asarray(seq_len, jnp.int32)
    embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
                     embedding_init=normal_init(cfg.initializer_range, ("vocab", "embed")), name="embed_tokens")
    x = embed(tokens)

    block = _ScanBlock if cfg.scan_layers else DecoderBlock
    if cfg.remat_policy != "none":
      block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(cfg, train, name="layers")(x, positions, seq_len, segment_ids)
    else:
      for i in range(cfg.num_layers):
        x = block(cfg, train, name=f"layers_{i}")(x, positions, seq_len, segment_ids)

    x = RMSNorm(cfg.rms_norm_eps, dtype, param_dtype, name="norm")(x)
    if cfg.tie_embeddings:
      logits = embed.attend(x)
    else:
      kernel = self.param("lm_head", normal_init(cfg.initializer_range, ("embed", "vocab")),
                          (cfg.hidden_size, cfg.vocab_size), param_dtype)
      logits = jnp.einsum("BTE,EV->BTV", x, kernel.astype(dtype))
    return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))


def init_params(config: ModelConfig, rng: jax.Array, seq_len: int = 8):
  """Unboxed float parameters of `Llama(config)` (use `abstract_params` for shapes without allocating)."""
  tokens = jnp.zeros((1, seq_len), jnp.int32)
  return nn.meta.unbox(Llama(config).init(rng, tokens)["params"])


def abstract_params(config: ModelConfig, seq_len: int = 8):
  """(ShapeDtypeStruct tree, logical axis names tree) of the parameters, without allocating them."""
  tokens = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
  boxed = jax.eval_shape(lambda rng: Llama(config).init(rng, tokens)["params"], jax.random.key(0))
  return nn.meta.unbox(boxed), nn.get_partition_spec(boxed)
