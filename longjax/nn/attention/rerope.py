"""rerope: ReRoPE (Su 2023): neighbours within `window` keep their positions, farther keys sit at distance
`window` (`ops.rerope_remap`); cache: the full K/V cache, keys before RoPE."""

from longjax import ops
from longjax.config import ReropeConfig
from longjax.nn.attention.remap import remapping_type


def remap(cfg) -> ops.Remap:
  return ops.rerope_remap(cfg.rerope.window)


REROPE = remapping_type(remap, ReropeConfig)
