"""apply_rope: rotate-half pairing as transformers, and float32 angles whatever the activation dtype."""

import jax.numpy as jnp
import numpy as np
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from longjax.config import RopeConfig
from longjax.positional import Frequencies, apply_rope, frequencies


def numpy_rope(x, positions, inv_freq, attention_factor=1.0):
  """float64 rotate-half RoPE of x[B, T, H, D] over its first 2 * len(inv_freq) channels."""
  x = np.asarray(x, np.float64)
  half = len(inv_freq)
  angles = np.asarray(positions, np.float64)[..., None] * np.asarray(inv_freq, np.float64)
  cos, sin = (f(angles)[:, :, None, :] * attention_factor for f in (np.cos, np.sin))
  x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)


def test_bfloat16_positions_100000_and_100001_rotate_differently():
  """bf16 has 8 mantissa bits: as bf16 angles (or positions), 100000 and 100001 would be one rotation."""
  x = np.random.default_rng(0).normal(size=(1, 1, 2, 128)).astype(np.float32)
  x = np.repeat(x, 2, axis=1)
  positions = jnp.array([[100000, 100001]], jnp.int32)
  freqs = frequencies(RopeConfig(), 128)
  out = apply_rope(jnp.asarray(x, jnp.bfloat16), positions, freqs)
  assert out.dtype == jnp.bfloat16
  out = np.asarray(out, np.float32)
  assert np.abs(out[0, 0] - out[0, 1]).max() > 0.5  # the highest frequency turns by one radian
  np.testing.assert_allclose(out, numpy_rope(x, positions, freqs.inv_freq), atol=0.05)
  assert np.asarray(jnp.asarray(100000, jnp.bfloat16), np.float32) == np.asarray(
      jnp.asarray(100001, jnp.bfloat16), np.float32)  # the collision the float32 path avoids


def test_apply_rope_matches_transformers_rotate_half():
  rng = np.random.default_rng(1)
  batch, length, heads, head_dim = 2, 5, 3, 64
  x = rng.normal(size=(batch, length, heads, head_dim)).astype(np.float32)
  positions = rng.integers(0, 5000, size=(batch, length)).astype(np.int32)
  rope = RopeConfig(rope_type="yarn", factor=8.0, original_max_position_embeddings=512)
  freqs = frequencies(rope, head_dim)
  ours = np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(positions), freqs))

  angles = torch.from_numpy(positions).float()[..., None] * torch.tensor(np.array(freqs.inv_freq))
  emb = torch.cat([angles, angles], dim=-1)
  scale = float(freqs.attention_factor)
  cos, sin = emb.cos() * scale, emb.sin() * scale
  q = torch.from_numpy(x).transpose(1, 2)  # transformers: [B, H, T, D]
  want, _ = apply_rotary_pos_emb(q, q, cos, sin)
  np.testing.assert_allclose(ours, want.transpose(1, 2).numpy(), rtol=1e-5, atol=1e-5)


def test_partial_rotary_leaves_the_other_channels():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1, 4, 2, 64)).astype(np.float32)
  positions = np.arange(4, dtype=np.int32)[None] * 1000
  freqs = frequencies(RopeConfig(partial_rotary_factor=0.5), 64)
  assert freqs.inv_freq.shape == (16,)
  out = np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(positions), freqs))
  np.testing.assert_array_equal(out[..., 32:], x[..., 32:])
  np.testing.assert_allclose(out, numpy_rope(x, positions, freqs.inv_freq), rtol=1e-4, atol=1e-4)


def test_attention_factor_scales_cos_and_sin():
  x = np.ones((1, 1, 1, 8), np.float32)
  inv_freq = jnp.asarray([1.0, 0.1, 0.01, 0.001], jnp.float32)
  plain = apply_rope(jnp.asarray(x), jnp.array([[7]]), Frequencies(inv_freq, jnp.float32(1.0)))
  scaled = apply_rope(jnp.asarray(x), jnp.array([[7]]), Frequencies(inv_freq, jnp.float32(1.5)))
  np.testing.assert_allclose(np.asarray(scaled), 1.5 * np.asarray(plain), rtol=1e-6)
