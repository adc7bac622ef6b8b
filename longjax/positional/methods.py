"""Positional methods: one small pure function per `rope_type`, picked from a registry.

Each method maps (rope config, rotary_dim, current length n) to (inv_freq, attention_factor).
`n` may be a traced int scalar, so one compiled function serves every length.
Formulas: ../../README.md 'Positional methods' and shared REFERENCES.md.
"""

from typing import Callable

import jax.numpy as jnp

from longjax.config import RopeConfig
from longjax.positional.rope import default_inv_freq

Method = Callable[[RopeConfig, int, "jnp.ndarray | int | None"], tuple]
METHODS: dict[str, Method] = {}


def register(name: str):
  def decorate(fn: Method) -> Method:
    METHODS[name] = fn
    return fn
  return decorate


@register("default")
def _default(rope: RopeConfig, dim: int, seq_len):
  del seq_len
  return default_inv_freq(rope.rope_theta, dim), 1.0


@register("linear")
def _linear(rope: RopeConfig, dim: int, seq_len):
  """Position Interpolation (Chen et al. 2023): positions m/s, i.e. inv_freq / s."""
  del seq_len
  return default_inv_freq(rope.rope_theta, dim) / rope.factor, 1.0
