"""Positional modules: `frequencies(rope, head_dim, seq_len)` picks a method by `rope_type`; `apply_rope` rotates."""

import jax
import jax.numpy as jnp

from longjax.config import RopeConfig
from longjax.positional.methods import METHODS
from longjax.positional.rope import Frequencies, apply_rope, default_inv_freq, rope_cos_sin, rotate_half


def frequencies(rope: RopeConfig, head_dim: int, seq_len=None) -> Frequencies:
  """inv_freq float32[rotary_dim // 2] and attention_factor for the current total length `seq_len`.

  `seq_len` matters only for dynamic methods (dynamic, dynamic_yarn, longrope) and may be traced;
  None means "no longer than the pre-trained length".
  """
  method = METHODS[rope.rope_type]
  inv_freq, attention_factor = method(rope, rope.rotary_dim(head_dim), seq_len)
  return Frequencies(jnp.asarray(inv_freq, jnp.float32), jnp.asarray(attention_factor, jnp.float32))


# Methods whose frequencies move with the current length: a KV cache keeps their keys before RoPE
# (YaRN paper, sec. 3.3) and turns them with the frequencies of each step.
DYNAMIC_METHODS = ("dynamic", "dynamic_yarn", "longrope")


def is_dynamic(rope: RopeConfig) -> bool:
  """True when `frequencies` depends on `seq_len`."""
  return rope.rope_type in DYNAMIC_METHODS


def frequencies_per_row(rope: RopeConfig, head_dim: int, seq_len: jax.Array) -> Frequencies:
  """`frequencies` for rows of different current lengths int[B]: inv_freq [B, d/2] for dynamic methods.

  Static methods ignore the length and give the shared [d/2] frequencies.
  """
  if not is_dynamic(rope):
    return frequencies(rope, head_dim)
  return jax.vmap(lambda n: frequencies(rope, head_dim, n))(jnp.asarray(seq_len, jnp.int32))


__all__ = ["DYNAMIC_METHODS", "Frequencies", "METHODS", "apply_rope", "default_inv_freq", "frequencies",
           "frequencies_per_row", "is_dynamic", "rope_cos_sin", "rotate_half"]
