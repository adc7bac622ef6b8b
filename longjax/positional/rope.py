"""Rotary position embedding: default frequencies and the rotation itself (rotate-half pairing)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Frequencies(NamedTuple):
  """What a positional method produces: rotate by `positions * inv_freq`, scale cos and sin by `attention_factor`."""

  inv_freq: jax.Array  # float32[rotary_dim // 2], or [B, rotary_dim // 2] per row (`frequencies_per_row`)
  attention_factor: jax.Array  # float32[] or [B] (scales attention logits by its square)


def default_inv_freq(rope_theta, rotary_dim: int) -> jax.Array:
  """inv_freq_i = theta^(-2i/d), i = 0..d/2-1 (RoFormer, Su et al. 2021, eq. 15); float32.

  `rope_theta` may be a traced scalar (Dynamic NTK moves the base with the length).
  """
  exponents = jnp.arange(0, rotary_dim, 2, dtype=jnp.int32).astype(jnp.float32) / rotary_dim
  return 1.0 / jnp.power(jnp.asarray(rope_theta, jnp.float32), exponents)


def rotate_half(x: jax.Array) -> jax.Array:
  """[x1, x2] -> [-x2, x1] over the last axis (the GPT-NeoX / Hugging Face pairing)."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def rope_cos_sin(positions: jax.Array, freqs: Frequencies) -> tuple[jax.Array, jax.Array]:
  """positions int[B, T] -> (cos, sin) float32[B, T, rotary_dim], already scaled by attention_factor."""
  inv_freq = freqs.inv_freq.astype(jnp.float32)
  scale = jnp.asarray(freqs.attention_factor, jnp.float32)
  if inv_freq.ndim == 2:  # one set of frequencies per batch row
    inv_freq, scale = inv_freq[:, None, :], scale.reshape(-1, 1, 1)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles) * scale, jnp.sin(angles) * scale


def apply_rope(x: jax.Array, positions: jax.Array, freqs: Frequencies) -> jax.Array:
  """Rotate x[B, T, H, D] at positions int[B, T]; only the first rotary_dim channels turn.

  Angles, cos and sin are float32 whatever x's dtype (bf16 angles make positions
  256 and 257 collide); the result is cast back to x's dtype.
  """
  rotary_dim = 2 * freqs.inv_freq.shape[-1]
  cos, sin = rope_cos_sin(positions, freqs)
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  x_rot = x[..., :rotary_dim].astype(jnp.float32)
  rotated = (x_rot * cos + rotate_half(x_rot) * sin).astype(x.dtype)
  if rotary_dim == x.shape[-1]:
    return rotated
  return jnp.concatenate([rotated, x[..., rotary_dim:]], axis=-1)
