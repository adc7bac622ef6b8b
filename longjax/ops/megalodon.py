"""MEGALODON's pure array functions (Ma et al. 2024; longjax.nn.megalodon owns the parameters and the state):
the offset norms, CEMA's coefficients and last state, and attention inside chunks, whole or streamed."""

import math

import jax
import jax.numpy as jnp

from longjax.ops.attention import attention
from longjax.ops.cached import cached_attention, write_heads
from longjax.ops.reference import attention_mask, naive_attention
from longjax.positional import apply_rope


def offset_norm(x, weight, bias, eps, *, center: bool):
  """LayerNorm (center) or RMSNorm over the last axis in float32, scaled by weight + 1 (and + bias)."""
  x32 = x.astype(jnp.float32)
  if center:
    x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  if weight is not None:
    y = y * (weight + 1.0)
  if bias is not None:
    y = y + bias
  return y.astype(x.dtype)


def cema_coefficients(alpha, delta, theta, gamma):
  """p float32[D, N], q complex64[D, N], gamma complex64[D, N] (scaled by sqrt(1/N)) from the parameters."""
  n = alpha.shape[-1]
  alpha, delta = jax.nn.sigmoid(alpha.astype(jnp.float32)), jax.nn.sigmoid(delta.astype(jnp.float32))
  angle = (2 * math.pi / n) * jax.nn.sigmoid(theta.astype(jnp.float32))[:, None]  # one per channel
  phase = jnp.arange(1, n + 1, dtype=jnp.float32) * angle
  q = (1.0 - alpha * delta) * jnp.exp(1j * phase.astype(jnp.complex64))
  gamma_c = (gamma[..., 0] + 1j * gamma[..., 1]).astype(jnp.complex64) * math.sqrt(1.0 / n)
  return alpha, q.astype(jnp.complex64), gamma_c


def cema_last_state(x, p, q, h0, valid):
  """The CEMA state after each row's last real step (real steps first): a scan that holds h on padding."""
  batch, _, width = x.shape
  h = jnp.zeros((batch, width, p.shape[-1]), jnp.complex64) if h0 is None else h0

  def step(h, inputs):
    x_t, valid_t = inputs
    new = p * x_t[:, :, None] + q * h
    return jnp.where(valid_t[:, None, None], new, h), None

  h, _ = jax.lax.scan(step, h, (jnp.moveaxis(x, 1, 0), jnp.moveaxis(valid, 1, 0)))
  return h


def chunked_attention(q, k, v, chunk: int, impl: str):
  """Causal attention inside consecutive chunks (the last may be partial); q, k [B, T, H, d], v [B, T, H, e]."""
  batch, length = q.shape[:2]
  chunks = -(-length // chunk)
  pad = chunks * chunk - length if chunks > 1 else 0
  width = chunk if chunks > 1 else length

  def split(x):  # chunks become batch rows; zero padding at the end is causally invisible to real queries
    x = jnp.pad(x, [(0, 0), (0, pad), (0, 0), (0, 0)]) if pad else x
    return x.reshape(batch * chunks, width, *x.shape[2:])

  qs, ks, vs = split(q), split(k), split(v)
  if q.shape[-1] == v.shape[-1]:
    out = attention(qs, ks, vs, causal=True, impl=impl)
  else:
    out = naive_attention(qs, ks, vs, attention_mask(width, width, causal=True))
  return out.reshape(batch, chunks * width, *out.shape[2:])[:, :length]


def stream_chunk_attention(q, k, v, key, value, filled, valid, freqs, chunk: int):
  """One token at a time (lax.scan) through the open chunk: token n sits at slot n % chunk, RoPE at that slot,
  and sees slots 0..n % chunk; the slots of a finished chunk are overwritten by the next one.

  q, k [B, T, H, d], v [B, T, H, e]; key [B, H, chunk, d], value [B, H, chunk, e] and filled int32[B] (tokens
  seen) of the open chunk -> (out [B, T, H, e], (key, value, filled))."""
  batch, length = q.shape[:2]
  valid = jnp.ones((batch, length), bool) if valid is None else valid

  def step(carry, inputs):
    key, value, filled = carry
    q_t, k_t, v_t, valid_t = inputs
    slot = filled % chunk
    q_t, k_t = (apply_rope(t[:, None], slot[:, None], freqs) for t in (q_t, k_t))
    target = jnp.where(valid_t, slot, chunk)[:, None]
    key, value = write_heads(key, target, k_t), write_heads(value, target, v_t[:, None])
    out = cached_attention(q_t, key, value, q_offsets=slot, kv_lengths=slot + 1, key_block=chunk)
    return (key, value, filled + valid_t.astype(jnp.int32)), out[:, 0]

  carry, out = jax.lax.scan(step, (key, value, filled),
                            tuple(jnp.moveaxis(t, 1, 0) for t in (q, k, v, valid)))
  return jnp.moveaxis(out, 0, 1), carry
