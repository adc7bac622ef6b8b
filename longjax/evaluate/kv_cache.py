"""KV-cache memory: what generation must keep per layer to continue after `length` tokens.

Full attention keeps every token's K and V: 2 (K and V) * layers * kv_heads * head_dim * bytes_per_value
* tokens * batch (REFERENCES "Evaluation protocols"; LLaMA-2 13B in float16: 800 KiB per token, 100 GiB at
128K). The constant-memory types keep:
- sliding: the sinks and the window, min(length, sinks + window) tokens of K/V (StreamingLLM);
- infini: the compressive memory M float32[Hkv, D, D] and normalizer z float32[Hkv, D], plus the open
  segment's K/V, min(length, segment_len) tokens (Infini-attention);
- megalodon (block): the CEMA state complex64[hidden, ema_dim], the timestep-norm statistics (count
  int32, mean and var float32[groups]) and the open chunk's K/V, min(length, chunk_size) tokens of
  z_dim + value_dim values over all heads (MEGALODON), plus the final norm's statistics once.
Each block gives its counts (`cache_formula`); a llama block asks its attention type's registry entry
(`longjax.nn.attention`: `cached_tokens`, `state_bytes`). These are the formulas' counts; the buffers
`longjax.inference.init_cache` allocates add small int32 bookkeeping (lengths, key positions) and round full
caches up to whole kernel blocks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax.numpy as jnp

from longjax.config import ModelConfig
from longjax.nn import BLOCKS
from longjax.nn.cache_size import LayerCacheFormula


@dataclasses.dataclass(frozen=True)
class CacheSize:
  """Bytes of one model's cache at one length, for the whole batch."""

  length: int
  batch_size: int
  dtype: str
  cached_tokens: int  # K/V slots a layer holds
  layer_bytes: int  # one layer: K/V plus recurrent state
  state_bytes: int  # of which the constant (float32 / complex64) recurrent state, one layer
  total_bytes: int  # all layers (plus a final-norm state, megalodon)
  device_bytes: int  # the share of one device of the mesh


def _formula(model_config: ModelConfig, length: int) -> LayerCacheFormula:
  """The block's count of one layer's cache (a llama block asks its attention type)."""
  return BLOCKS[model_config.block].cache_formula(model_config, length)


def cached_tokens(model_config: ModelConfig, length: int) -> int:
  """How many tokens' K/V one layer holds after `length` tokens."""
  return _formula(model_config, length).cached_tokens


def kv_cache_bytes(model_config: ModelConfig, length: int, batch_size: int = 1, dtype: str = "float16",
                   kv_policy=None) -> int:
  """Bytes of the cache of `batch_size` sequences of `length` tokens, K/V stored in `dtype`, all layers."""
  return kv_cache_size(model_config, length, batch_size, dtype, kv_policy=kv_policy).total_bytes


def _shards(size: int, mesh_axes: int) -> int:
  """How many ways a dimension of `size` is cut: the rules shard it only when the mesh axes divide it."""
  return mesh_axes if size % mesh_axes == 0 else 1


def kv_cache_size(model_config: ModelConfig, length: int, batch_size: int = 1, dtype: str = "float16", *,
                  data: int = 1, fsdp: int = 1, tensor: int = 1, kv_policy=None) -> CacheSize:
  """The cache of `length` tokens, per layer, in total, and per device of a (data, fsdp, tensor) mesh.

  As longjax.sharding's rules place it: the batch over data * fsdp, the kv heads (megalodon: heads) over
  tensor, each only when divisible (else replicated). `kv_policy` (an entry of `longjax.inference.kv_policies`,
  from `make_policy`) gives one layer's bytes by its own `state_bytes` (full attention only).
  """
  formula = _formula(model_config, length)
  tokens, state, final = formula.cached_tokens, formula.state_bytes, formula.final_state_bytes
  kv = tokens * formula.kv_values_per_token * jnp.dtype(dtype).itemsize
  if kv_policy is not None:  # KV-cache compression: the policy's own count (longjax.inference.kv_policies)
    tokens, kv, state = kv_policy.cached_tokens(length), kv_policy.state_bytes(model_config, length, dtype), 0
  layer = (kv + state) * batch_size
  total = layer * model_config.num_layers + final * batch_size
  batch_cut, head_cut = _shards(batch_size, data * fsdp), _shards(formula.heads, tensor)
  head_cut_state = head_cut if formula.state_follows_heads else 1
  device_layer = kv * batch_size // (batch_cut * head_cut) + state * batch_size // (batch_cut * head_cut_state)
  device = device_layer * model_config.num_layers + final * batch_size // batch_cut
  return CacheSize(length, batch_size, dtype, tokens, layer, state * batch_size, total, device)


def kv_cache_table(model_config: ModelConfig, lengths: Sequence[int], batch_size: int = 1,
                   dtype: str = "float16", kv_policy=None, **mesh: int) -> list[CacheSize]:
  """kv_cache_size at each length (mesh: data, fsdp, tensor sizes)."""
  return [kv_cache_size(model_config, n, batch_size, dtype, kv_policy=kv_policy, **mesh) for n in lengths]


def format_bytes(n: float) -> str:
  """1536 -> '1.5 KiB' (binary units, as the REFERENCES figures)."""
  if n < 1024:
    return f"{int(n)} B"
  exponent = min(int(math.log(n, 1024)), 4)
  return f"{n / 1024 ** exponent:.4g} {['B', 'KiB', 'MiB', 'GiB', 'TiB'][exponent]}"
