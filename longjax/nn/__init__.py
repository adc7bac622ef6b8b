"""flax.linen modules: they own the parameters and call longjax.ops and longjax.positional."""

from longjax.nn.attention import Attention
from longjax.nn.layers import MLP, Dense, RMSNorm
from longjax.nn.llama import REMAT_POLICIES, DecoderBlock, Llama, abstract_params, init_params
from longjax.nn.stacking import scan_params, unscan_params

__all__ = ["Attention", "Dense", "DecoderBlock", "Llama", "MLP", "REMAT_POLICIES", "RMSNorm", "abstract_params",
           "init_params", "scan_params", "unscan_params"]
