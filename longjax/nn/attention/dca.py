"""dca: Dual Chunk Attention (An et al. 2024): positions within chunks of `chunk_size` with a `local_window`
(`ops.dca_remap`); cache: the full K/V cache, keys before RoPE."""

from longjax import ops
from longjax.config import DcaConfig
from longjax.nn.attention.remap import remapping_type


def remap(cfg) -> ops.Remap:
  return ops.dca_remap(cfg.dca.chunk_size, cfg.dca.local_window)


DCA = remapping_type(remap, DcaConfig)
