"""self_extend: Self-Extend (Jin et al. 2024): neighbours within `window` keep their positions, farther keys are
grouped by `group_size` (`ops.self_extend_remap`); cache: the full K/V cache, keys before RoPE."""

from longjax import ops
from longjax.config import SelfExtendConfig
from longjax.nn.attention.remap import remapping_type


def remap(cfg) -> ops.Remap:
  return ops.self_extend_remap(cfg.self_extend.group_size, cfg.self_extend.window)


SELF_EXTEND = remapping_type(remap, SelfExtendConfig)
