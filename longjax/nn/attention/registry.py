"""Attention types, picked by `model.attention.type` from ATTENTION_TYPES: each entry owns its apply and decode
step, its state, the state's size, and the tokens it needs inserted (one module a type beside this file).

  full      causal attention; cache: K/V of every token up to max_length (`ops.KVCache`).
  s2        LongLoRA's shifted sparse attention in training; decodes with the full cache.
  sliding   a window of keys plus `sinks` first keys; cache: StreamingLLM's sinks + rolling window.
  infini    Infini-attention with its per-head gate; cache: the compressive memory plus the open segment.
  landmark  landmark attention; cache: every block with its landmark key, top-k blocks per head a step.
  self_extend, dca, rerope
            training-free position remapping; cache: the full K/V cache, keys before RoPE.

With `attention.context_parallel` and a mesh whose sequence axis is > 1, the whole-sequence calls of
the types marked `sequence_parallel` (full, sliding) run `ops.context_parallel_attention` over that
axis; infini cannot (a sequential recurrence over segments), nor s2 (it trains on shifted groups; its
evaluation path is full's), and config validation says so.
"""

from longjax.config import ModelConfig
from longjax.nn.attention.common import AttentionType, InsertedTokens
from longjax.nn.attention.dca import DCA
from longjax.nn.attention.full import FULL
from longjax.nn.attention.infini import INFINI
from longjax.nn.attention.landmark import LANDMARK
from longjax.nn.attention.rerope import REROPE
from longjax.nn.attention.s2 import S2
from longjax.nn.attention.self_extend import SELF_EXTEND
from longjax.nn.attention.sliding import SLIDING

ATTENTION_TYPES: dict[str, AttentionType] = {
    "full": FULL,
    "s2": S2,
    "sliding": SLIDING,
    "infini": INFINI,
    "landmark": LANDMARK,
    "self_extend": SELF_EXTEND,
    "dca": DCA,
    "rerope": REROPE,
}


def attention_type(config: ModelConfig) -> AttentionType:
  """The registry entry of a model's attention type."""
  return ATTENTION_TYPES[config.attention.type]


def inserted_tokens(config: ModelConfig) -> InsertedTokens | None:
  """The tokens packing and generation insert for a model's attention type (landmarks), else None."""
  return attention_type(config).inserted_tokens(config.attention)
