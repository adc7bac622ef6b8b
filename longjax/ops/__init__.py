"""Pure array functions with no parameters: attention kernels and their dispatch, caches, recurrences, the loss."""

from longjax.ops.attention import IMPLS, attention, choose_impl
from longjax.ops.blockwise import blockwise_attention, round_up
from longjax.ops.cema import cema
from longjax.ops.cached import KVCache, cached_attention, init_kv_cache, write_heads, write_rows
from longjax.ops.infini import InfiniCache, InfiniState, infini_attention, infini_cache_attention, init_infini_cache
from longjax.ops.landmark import (LandmarkCache, init_landmark_cache, is_landmark_position, landmark_attention,
                                  landmark_cache_attention)
from longjax.ops.matmul import dense
from longjax.ops.loss import chunked_cross_entropy, chunked_token_nll, cross_entropy
from longjax.ops.reference import attention_mask, naive_attention
from longjax.ops.remap import (Remap, dca_attention, dca_remap, logn_scale, remap_attention, rerope_attention,
                               remap_whole_sequence, rerope_remap, self_extend_attention,
                               self_extend_remap)
from longjax.ops.s2 import s2_attention
from longjax.ops.sink_cache import SinkCache, init_sink_cache, sink_cache_attention
from longjax.ops.kv_compress import (CompressedCache, EvictingCache, QuantCache, evicting_attention,
                                    init_evicting_cache, init_quant_cache, quantized_attention)
from longjax.ops.timestep_norm import TimestepNormState, init_timestep_norm_state, timestep_norm
from longjax.ops.context_parallel import context_parallel_attention, load_balance, unbalance
from longjax.ops import megalodon

__all__ = ["CompressedCache", "EvictingCache", "QuantCache", "evicting_attention", "init_evicting_cache",
           "init_quant_cache", "quantized_attention", "IMPLS", "InfiniCache", "InfiniState", "KVCache", "LandmarkCache", "SinkCache", "attention",
           "attention_mask", "blockwise_attention", "cached_attention", "cema", "choose_impl", "cross_entropy",
           "infini_attention", "infini_cache_attention", "init_infini_cache", "init_kv_cache", "init_landmark_cache",
           "init_sink_cache", "is_landmark_position", "landmark_attention", "landmark_cache_attention",
           "naive_attention", "s2_attention", "sink_cache_attention", "TimestepNormState", "init_timestep_norm_state",
           "timestep_norm", "write_heads", "write_rows"]
__all__ += ["chunked_cross_entropy", "chunked_token_nll"]
__all__ += ["context_parallel_attention", "load_balance", "unbalance"]
__all__ += ["Remap", "dca_attention", "dca_remap", "logn_scale", "remap_attention", "remap_whole_sequence",
            "rerope_attention", "rerope_remap", "self_extend_attention", "self_extend_remap"]
__all__ += ["dense", "megalodon", "round_up"]
