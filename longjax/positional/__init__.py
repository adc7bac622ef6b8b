"""Positional modules: `frequencies(rope, head_dim, seq_len)` picks a method by `rope_type`; `apply_rope` rotates."""

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


__all__ = ["Frequencies", "METHODS", "apply_rope", "default_inv_freq", "frequencies", "rope_cos_sin", "rotate_half"]
