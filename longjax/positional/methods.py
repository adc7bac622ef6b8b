"""Positional methods: one small pure function per `rope_type`, picked from a registry.

Each method maps (rope config, rotary_dim d, current total length n) to (inv_freq float32[d/2],
attention_factor). `n` may be a traced int scalar, so one compiled function serves every length;
None means "no longer than the pre-trained length L". Formulas, papers and config examples:
docs/positional.md. Every method matches transformers' `ROPE_INIT_FUNCTIONS` (tests/positional/).

Precision: what does not depend on `n` is computed on the host in float64 and rounded once to
float32 (closer to the exact value than transformers' own float32 arithmetic); what depends on
`n` is float32 jnp, written so that the float64 part factors out (see `_dynamic`).
"""

from typing import Callable

import jax.numpy as jnp
import numpy as np

from longjax.config import RopeConfig

Method = Callable[[RopeConfig, int, "jnp.ndarray | int | None"], tuple]
METHODS: dict[str, Method] = {}


def register(name: str):
  def decorate(fn: Method) -> Method:
    METHODS[name] = fn
    return fn
  return decorate


def _host_inv_freq(rope_theta: float, dim: int) -> np.ndarray:
  """b^(-2i/d), i = 0..d/2-1, float64 on the host (the jnp `default_inv_freq` is for traced bases)."""
  return 1.0 / np.power(float(rope_theta), np.arange(0, dim, 2, dtype=np.float64) / dim)


def _float32(inv_freq: np.ndarray) -> np.ndarray:
  return inv_freq.astype(np.float32)


@register("default")
def _default(rope: RopeConfig, dim: int, seq_len):
  """RoFormer (Su et al. 2021, eq. 15): inv_freq_i = b^(-2i/d)."""
  del seq_len
  return _float32(_host_inv_freq(rope.rope_theta, dim)), 1.0


@register("linear")
def _linear(rope: RopeConfig, dim: int, seq_len):
  """Position Interpolation (Chen et al. 2023): positions m/s, i.e. inv_freq / s."""
  del seq_len
  return _float32(_host_inv_freq(rope.rope_theta, dim) / rope.factor), 1.0


def _ntk_exponents(dim: int) -> np.ndarray:
  """2i/(d-2): with base b * r^(d/(d-2)), inv_freq_i = b^(-2i/d) * r^(-2i/(d-2)).

  Written this way the highest frequency (i = 0) stays 1 and the lowest (i = d/2-1) is exactly
  divided by r; d = 2 has only i = 0, which no base change moves.
  """
  return np.arange(0, dim, 2, dtype=np.float64) / max(dim - 2, 1)


@register("ntk")
def _ntk(rope: RopeConfig, dim: int, seq_len):
  """Fixed NTK-aware scaling (bloc97, 2023; YaRN paper sec. 3.1): base b * alpha^(d/(d-2))."""
  del seq_len
  inv_freq = _host_inv_freq(rope.rope_theta, dim) * np.power(float(rope.alpha), -_ntk_exponents(dim))
  return _float32(inv_freq), 1.0


@register("dynamic")
def _dynamic(rope: RopeConfig, dim: int, seq_len):
  """Dynamic NTK (emozilla, 2023): n = max(seq_len, L); base b * (s*n/L - (s-1))^(d/(d-2)).

  s*n/L - (s-1) is written 1 + s*(n-L)/L, exactly 1 (no change) while n <= L.
  """
  original = rope.original_max_position_embeddings
  length = original if seq_len is None else seq_len
  excess = jnp.maximum(jnp.asarray(length, jnp.int32) - original, 0).astype(jnp.float32)
  ratio = 1.0 + rope.factor * excess / original
  stretch = jnp.power(ratio, -jnp.asarray(_ntk_exponents(dim), jnp.float32))
  return jnp.asarray(_float32(_host_inv_freq(rope.rope_theta, dim))) * stretch, 1.0


def _yarn_correction_range(rope: RopeConfig, dim: int) -> tuple[float, float]:
  """Dimensions [low, high] of YaRN's ramp from extrapolation to interpolation (YaRN paper sec. 3.2, NTK-by-parts).

  correction_dim(r) = d ln(L / (2 pi r)) / (2 ln b) is the dimension that turns r times over L
  tokens; floor/ceil unless truncate=False; clamped to [0, d-1] as in transformers and jquesnelle/yarn.
  """
  original = rope.original_max_position_embeddings
  beta_fast, beta_slow = rope.yarn_betas

  def correction_dim(rotations: float) -> float:
    return dim * np.log(original / (rotations * 2 * np.pi)) / (2 * np.log(rope.rope_theta))

  low, high = correction_dim(beta_fast), correction_dim(beta_slow)
  if rope.truncate is None or rope.truncate:
    low, high = np.floor(low), np.ceil(high)
  return float(max(low, 0)), float(min(high, dim - 1))


def _yarn_inv_freq(rope: RopeConfig, dim: int, factor):
  """inv/s below the ramp, inv above it, linear in between; `factor` may be traced."""
  low, high = _yarn_correction_range(rope, dim)
  if low == high:
    high += 0.001  # avoid a zero-width ramp, as transformers and jquesnelle/yarn do
  # A float32 ramp, as transformers': in float64, the rounding of 1 - ramp near the ramp's top, times
  # (s - 1), would differ from transformers by up to 1e-6 at s = 16 with truncate=False.
  index = np.arange(dim // 2, dtype=np.float32)
  ramp = np.clip((index - np.float32(low)) / np.float32(high - low), 0, 1)
  keep = jnp.asarray(1 - ramp)  # 1: extrapolate (keep inv_freq), 0: interpolate (inv_freq / s)
  inv_freq = jnp.asarray(_float32(_host_inv_freq(rope.rope_theta, dim)))
  return inv_freq / factor * (1 - keep) + inv_freq * keep


def _yarn_attention_factor(rope: RopeConfig, factor):
  """cos and sin scale (YaRN paper sec. 3.4: sqrt(1/t) = 0.1 ln s + 1); `factor` may be traced.

  As transformers: an explicit attention_factor wins; else mscale and mscale_all_dim, both set and
  nonzero, give the DeepSeek ratio; else (mscale alone is ignored) 0.1 ln s + 1. 1 when s <= 1.
  """
  if rope.attention_factor is not None:
    return rope.attention_factor

  def mscale(weight: float):
    return jnp.where(factor <= 1, 1.0, 0.1 * weight * jnp.log(jnp.maximum(factor, 1.0)) + 1.0)

  if rope.mscale and rope.mscale_all_dim:
    return mscale(rope.mscale) / mscale(rope.mscale_all_dim)
  return mscale(1.0)


@register("yarn")
def _yarn(rope: RopeConfig, dim: int, seq_len):
  """YaRN (Peng et al. 2023, arXiv 2309.00071, sec. 3.2-3.4) with the static factor s."""
  del seq_len
  return _yarn_inv_freq(rope, dim, rope.factor), _yarn_attention_factor(rope, rope.factor)


@register("dynamic_yarn")
def _dynamic_yarn(rope: RopeConfig, dim: int, seq_len):
  """Dynamic YaRN (YaRN paper sec. 3.3; jquesnelle/yarn): YaRN with s = max(1, n/L) from the current length.

  The configured `factor` is ignored; frequencies and attention factor move together.
  """
  original = rope.original_max_position_embeddings
  length = original if seq_len is None else seq_len
  factor = jnp.maximum(1.0, jnp.asarray(length, jnp.int32).astype(jnp.float32) / original)
  return _yarn_inv_freq(rope, dim, factor), _yarn_attention_factor(rope, factor)


@register("llama3")
def _llama3(rope: RopeConfig, dim: int, seq_len):
  """Llama 3.1 (Meta 2024): keep wavelengths < L/high, divide those > L/low by s, blend in between."""
  del seq_len
  inv_freq = _host_inv_freq(rope.rope_theta, dim)
  factor = rope.factor
  low, high = rope.llama3_freq_factors
  original = rope.original_max_position_embeddings
  wavelength = 2 * np.pi / inv_freq
  smooth = np.clip((original / wavelength - low) / (high - low), 0.0, 1.0)
  # smooth is 0 beyond L/low (divide by s) and 1 below L/high (keep): one formula covers the three bands.
  return _float32((1 - smooth) * inv_freq / factor + smooth * inv_freq), 1.0


@register("longrope")
def _longrope(rope: RopeConfig, dim: int, seq_len):
  """LongRoPE (Ding et al. 2024, arXiv 2402.13753): inv_freq_i / ext_i, ext = long_factor if n > L else short.

  attention_factor = sqrt(1 + ln s / ln L) with s = `factor`; transformers falls back to
  max_position_embeddings / L when factor is None, which a RopeConfig does not know: there s = 1.
  """
  original = rope.original_max_position_embeddings
  inv_freq = _host_inv_freq(rope.rope_theta, dim)
  short = _float32(inv_freq / np.asarray(rope.short_factor, np.float64))
  long = _float32(inv_freq / np.asarray(rope.long_factor, np.float64))
  inv = short if seq_len is None else jnp.where(jnp.asarray(seq_len) > original, long, short)
  if rope.attention_factor is not None:
    return inv, rope.attention_factor
  factor = 1.0 if rope.factor is None else rope.factor
  return inv, float(np.sqrt(1 + np.log(factor) / np.log(original))) if factor > 1 else 1.0
