"""The MEGALODON block (Ma et al. 2024, arXiv 2404.08801), wired as XuezheMax/megalodon `model/mega.py` wires it.

  x_n = TSN(x)                                   timestep norm: cumulative group statistics
  mx  = RMSNorm(CEMA(x_n))                       complex EMA carries information across chunks
  z   = RMSNorm_head(W_z mx + b)                 per-head, no affine
  q   = z (g0 + 1)/sqrt(d_h) + b0,  k = z (g1 + 1)/sqrt(d_h) + b1,  RoPE at positions inside the chunk
  v   = SiLU(W_v x_n + b),  r = SiLU(W_r mx + b)
  a   = softmax(q k^T) v, causal inside chunks of `chunk_size` only (scale 1: q already carries 1/sqrt(d_h))
  h   = W_h1 mx + b + W_h2 (a * r) + x
  out = FFN(LayerNorm(h)) + x                    the two-hop residual: the block input, not h

Norm weights are stored as offsets from 1 (the reference's `weight + 1`), initialised at 0. Linear
layers use the reference's kaiming normal (a = sqrt(5): std 1/sqrt(3 fan_in)), biases 0.

State for streaming (one per layer): the CEMA state h, the timestep-norm statistics and the K/V of
the open chunk (slots reused from position 0 at each chunk boundary), so decoding runs at constant
memory. RoPE pairs rotate-half here (the reference pairs adjacent coordinates; it matters only when
importing its weights).
"""

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from longjax import ops, positional
from longjax.config import ModelConfig
from longjax.nn.cache_size import COMPLEX64, FLOAT32, INT32, LayerCacheFormula
from longjax.nn.layers import Dense

# The reference's `he` init: kaiming_normal_(a=sqrt(5)), i.e. variance 1 / (3 fan_in).
_HE_SCALE = 1.0 / 3.0


class MegalodonState(NamedTuple):
  """One layer's streaming state: cema_h complex64[B, D, N]; norm_count int32[B], norm_mean and norm_var
  float32[B, G]; key [B, H, C, dz] (after RoPE) and value [B, H, C, dv] of the open chunk; length int32[B]."""

  cema_h: jax.Array
  norm_count: jax.Array
  norm_mean: jax.Array
  norm_var: jax.Array
  key: jax.Array
  value: jax.Array
  length: jax.Array


class TimestepNorm(nn.Module):
  """ops.timestep_norm with weight and bias offsets (init 0); state (count, mean, var) or None."""

  num_groups: int
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x, valid=None, state=None):
    width = x.shape[-1]
    weight = self.param("weight", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (width,))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (width,))
    return ops.timestep_norm(x, weight, bias, num_groups=self.num_groups, eps=self.eps, state=state, mask=valid)


class _Norm(nn.Module):
  center: bool
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    weight = self.param("weight", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (width,))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                      (width,)) if self.center else None
    return ops.megalodon.offset_norm(x, weight, bias, self.eps, center=self.center)


def _theta_init(key, shape, dtype=jnp.float32):
  """logit(f_j), f_j = exp(-j ln(D) / D) for j = 1..D, permuted over channels (reference `_reset_parameters`)."""
  width = shape[0]
  freqs = jnp.exp(-jnp.arange(1, width + 1, dtype=jnp.float32) * math.log(width) / width)
  freqs = jax.random.permutation(key, freqs)
  return jnp.log(freqs / (1.0 - freqs)).astype(dtype)


def _gamma_init(key, shape, dtype=jnp.float32):
  """Real part N(0, 1), imaginary part 0."""
  return jnp.stack([jax.random.normal(key, shape[:-1], dtype), jnp.zeros(shape[:-1], dtype)], axis=-1)


class ComplexEMA(nn.Module):
  """Multi-head complex EMA (MEGALODON sec. 3.1): x [B, T, D] -> (y float32 [B, T, D], h_last)."""

  ema_dim: int
  method: str = "fft"

  @nn.compact
  def __call__(self, x, h0=None, valid=None):
    width, n = x.shape[-1], self.ema_dim
    axes = ("embed", None)
    alpha = self.param("alpha", nn.with_logical_partitioning(nn.initializers.normal(0.2), axes), (width, n))
    delta = self.param("delta", nn.with_logical_partitioning(nn.initializers.normal(0.2), axes), (width, n))
    theta = self.param("theta", nn.with_logical_partitioning(_theta_init, ("embed",)), (width,))
    gamma = self.param("gamma", nn.with_logical_partitioning(_gamma_init, ("embed", None, None)), (width, n, 2))
    omega = self.param("omega", nn.with_logical_partitioning(
        nn.initializers.truncated_normal(0.25, lower=-4.0, upper=4.0), ("embed",)), (width,))
    p, q, gamma_c = ops.megalodon.cema_coefficients(alpha, delta, theta, gamma)
    x32 = x.astype(jnp.float32)
    if valid is not None:
      x32 = x32 * valid[..., None]
    y, h_last = ops.cema(x32, p, q, gamma_c, omega.astype(jnp.float32), h0, method=self.method)
    if valid is not None:  # padding (a suffix of each row) must not move the state: h after the last real step
      h_last = ops.megalodon.cema_last_state(x32, p, q, h0, valid)
    return y, h_last


class MegalodonBlock(nn.Module):
  """(x [B, T, E], positions, seq_len, segment_ids, state) -> (x, state); see the module docstring."""

  config: ModelConfig
  train: bool = False
  balanced: bool = False  # never True: MEGALODON runs no context parallelism (config validation refuses it)

  def _dense(self, features, in_axes, out_axes, name, fan_in):
    cfg = self.config
    return Dense(features=features, in_axes=in_axes, out_axes=out_axes, init_std=math.sqrt(_HE_SCALE / fan_in),
                 dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), name=name)

  def _bias(self, name, width, axis):
    return self.param(name, nn.with_logical_partitioning(nn.initializers.zeros, (axis,)), (width,))

  @nn.compact
  def __call__(self, x, positions, seq_len, segment_ids, state=None):
    del positions, seq_len  # positions restart in every chunk (RoPE inside chunks only)
    cfg, mega = self.config, self.config.megalodon
    dtype = jnp.dtype(cfg.dtype)
    width, heads = cfg.hidden_size, cfg.num_heads
    z_head, v_head = mega.z_dim // heads, mega.value_dim // heads
    batch, length = x.shape[:2]
    valid = None if segment_ids is None else segment_ids != 0
    residual = x
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

    norm_state = None if state is None else (state.norm_count, state.norm_mean, state.norm_var)
    x_n, norm_state = TimestepNorm(num_groups=mega.norm_groups, eps=mega.norm_eps, name="timestep_norm")(
        x, valid, norm_state)
    ema, cema_h = ComplexEMA(ema_dim=mega.ema_dim, method=mega.cema_method, name="cema")(
        x_n, None if state is None else state.cema_h, valid)
    mx = _Norm(center=False, eps=mega.norm_eps, name="ema_norm")(ema.astype(dtype))

    z = self._dense((mega.z_dim,), ("embed",), ("mlp",), "z_proj", width)(mx) + self._bias("z_bias", mega.z_dim, "mlp")
    z = ops.megalodon.offset_norm(z.reshape(batch, length, heads, z_head), None, None, mega.norm_eps, center=False)
    scale = self.param("qk_scale", nn.with_logical_partitioning(nn.initializers.zeros, (None, "mlp")), (2, mega.z_dim))
    shift = self.param("qk_shift", nn.with_logical_partitioning(nn.initializers.zeros, (None, "mlp")), (2, mega.z_dim))
    scale = ((scale + 1.0) / math.sqrt(z_head)).reshape(2, heads, z_head)
    shift = shift.reshape(2, heads, z_head)
    q, k = (z * scale[i] + shift[i] for i in range(2))
    v = nn.silu(self._dense((mega.value_dim,), ("embed",), ("mlp",), "v_proj", width)(x_n) +
                self._bias("v_bias", mega.value_dim, "mlp")).reshape(batch, length, heads, v_head)
    r = nn.silu(self._dense((mega.value_dim,), ("embed",), ("mlp",), "r_proj", width)(mx) +
                self._bias("r_bias", mega.value_dim, "mlp"))

    # The kernels divide logits by sqrt(d); MEGALODON's scale is 1 (q carries 1/sqrt(d_h) already).
    q = (q * math.sqrt(z_head)).astype(dtype)
    k, v = k.astype(dtype), v.astype(dtype)
    freqs = positional.frequencies(cfg.rope, z_head)
    if state is None:
      chunk_positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32) % mega.chunk_size, (batch, length))
      q, k = (positional.apply_rope(t, chunk_positions, freqs) for t in (q, k))
      attn = ops.megalodon.chunked_attention(q, k, v, mega.chunk_size, cfg.attention.impl)
      new_state = None
    else:
      attn, (key, value, filled) = ops.megalodon.stream_chunk_attention(q, k, v, state.key, state.value, state.length,
                                                                        valid, freqs, mega.chunk_size)
      new_state = MegalodonState(cema_h, *norm_state, key, value, filled)
    attn = attn.reshape(batch, length, mega.value_dim) * r
    h = (self._dense((width,), ("embed",), (None,), "h1_proj", width)(mx) + self._bias("h1_bias", width, "embed") +
         self._dense((width,), ("mlp",), ("embed",), "h2_proj", mega.value_dim)(attn))
    h = h + residual

    u = _Norm(center=True, eps=mega.norm_eps, name="ffn_norm")(h)
    hidden = self._dense((cfg.intermediate_size,), ("embed",), ("mlp",), "fc1", width)(u)
    hidden = nn.silu(hidden)
    if mega.swiglu:
      hidden = hidden * self._dense((cfg.intermediate_size,), ("embed",), ("mlp",), "fc3", width)(u)
    out = self._dense((width,), ("mlp",), ("embed",), "fc2", cfg.intermediate_size)(hidden)
    return (out + residual).astype(residual.dtype), new_state

  @staticmethod
  def init_state(config: ModelConfig, batch: int, max_length: int, dtype):
    del max_length  # constant memory: one chunk of K/V whatever the length
    mega, heads = config.megalodon, config.num_heads
    return MegalodonState(
        jnp.zeros((batch, config.hidden_size, mega.ema_dim), jnp.complex64),
        *ops.init_timestep_norm_state(batch, mega.norm_groups),
        jnp.zeros((batch, heads, mega.chunk_size, mega.z_dim // heads), dtype),
        jnp.zeros((batch, heads, mega.chunk_size, mega.value_dim // heads), dtype), jnp.zeros((batch,), jnp.int32))

  @staticmethod
  def cache_formula(config: ModelConfig, length: int) -> LayerCacheFormula:
    """The CEMA state complex64[hidden, ema_dim], the timestep-norm statistics (count int32, mean and var
    float32[groups]) and the open chunk's K/V, min(length, chunk_size) tokens of z_dim + value_dim values over all
    heads; the final norm's statistics once. The CEMA state runs over the hidden width: only the batch cuts it."""
    mega = config.megalodon
    norm_bytes = INT32 + 2 * mega.norm_groups * FLOAT32
    return LayerCacheFormula(min(length, mega.chunk_size), mega.z_dim + mega.value_dim,
                             config.hidden_size * mega.ema_dim * COMPLEX64 + norm_bytes, config.num_heads, False,
                             norm_bytes)

  @staticmethod
  def embedding_init(config: ModelConfig):
    std = 1.0 / math.sqrt(config.hidden_size)  # the reference's `gaussian` init: truncated at 3 std
    return nn.with_logical_partitioning(nn.initializers.truncated_normal(std, lower=-3.0, upper=3.0),
                                        ("vocab", "embed"))

  @staticmethod
  def final_norm(config: ModelConfig, x, valid, state):
    mega = config.megalodon
    return TimestepNorm(num_groups=mega.norm_groups, eps=mega.norm_eps, name="norm")(x, valid, state)

  @staticmethod
  def init_final_state(config: ModelConfig, batch: int):
    return ops.init_timestep_norm_state(batch, config.megalodon.norm_groups)
