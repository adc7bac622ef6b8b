"""flax.linen modules: they own the parameters and call longjax.ops and longjax.positional."""

from longjax.nn.attention import ATTENTION_TYPES, Attention, AttentionInputs, AttentionType
from longjax.nn.layers import MLP, Dense, RMSNorm
from longjax.nn.blocks import BLOCKS
from longjax.nn.decoder import DecoderBlock
from longjax.nn.llama import (REMAT_POLICIES, Llama, abstract_params, cache_lengths, init_cache, init_params,
                               lm_head_kernel)
from longjax.nn.megalodon import MegalodonBlock
from longjax.nn.stacking import scan_params, unscan_params

__all__ = ["ATTENTION_TYPES", "Attention", "AttentionInputs", "AttentionType", "BLOCKS", "Dense", "DecoderBlock",
           "Llama", "MLP", "MegalodonBlock", "REMAT_POLICIES", "RMSNorm", "abstract_params", "cache_lengths",
           "init_cache",
           "init_params", "lm_head_kernel", "scan_params", "unscan_params"]
