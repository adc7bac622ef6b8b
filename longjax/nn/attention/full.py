"""full: causal attention; cache: K/V of every token up to max_length (`ops.KVCache`).

Keys are cached after RoPE when the positional method is static, and before it when the method is dynamic (its
frequencies move with the length; YaRN paper sec. 3.3), so that every step turns all keys with the current
frequencies.
"""

from longjax import ops, positional
from longjax.nn.attention.common import AttentionInputs, AttentionType, append_kv, dense, init_kv, rotated, valid_tokens


def cached(cfg, rope, x: AttentionInputs, state: ops.KVCache):
  """The decode step: write the new tokens at each row's next slots, then attend over the filled cache."""
  dynamic = positional.is_dynamic(rope)
  freqs, q, k_rotated = rotated(rope, x)
  state_in_length = state.length
  state, _ = append_kv(state, x, x.k if dynamic else k_rotated)
  turn = dict(key_positions=state.positions, freqs=freqs) if dynamic else {}
  out = ops.cached_attention(q, state.key, state.value, q_offsets=state_in_length, kv_lengths=state.length,
                             key_block=cfg.kernel_block, **turn)
  return out, state


def apply(module, cfg, rope, x: AttentionInputs, state, train):
  del module, train
  if isinstance(state, ops.CompressedCache):  # KV-cache compression: the cache's policy (inference/kv_policies.py)
    return state.policy.attend(rope, x.q, x.k, x.v, x.positions, valid_tokens(x), state)
  if state is not None:
    return cached(cfg, rope, x, state)
  _, q, k = rotated(rope, x)
  return dense(cfg, q, k, x.v, x.segment_ids, balanced=x.balanced), None


def evaluates_plain(cfg) -> bool:
  del cfg
  return True


FULL = AttentionType(apply, init_kv, evaluates_plain=evaluates_plain, sequence_parallel=True, compressible=True)
