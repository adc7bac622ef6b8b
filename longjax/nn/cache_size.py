"""What one layer's cache holds, as counts a block gives the KV-cache calculator (`longjax.evaluate.kv_cache`)."""

from typing import NamedTuple

FLOAT32, INT32, COMPLEX64 = 4, 4, 8


class LayerCacheFormula(NamedTuple):
  """One layer, one batch row: `cached_tokens` tokens of `kv_values_per_token` K plus V values each (stored in the
  cache dtype), plus `state_bytes` of constant recurrent state; `heads`: what a tensor-parallel mesh cuts the K/V
  by, and the state too when `state_follows_heads`; `final_state_bytes`: state kept once per model."""

  cached_tokens: int
  kv_values_per_token: int
  state_bytes: int
  heads: int
  state_follows_heads: bool
  final_state_bytes: int
