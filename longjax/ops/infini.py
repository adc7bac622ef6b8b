"""Infini-attention (Munkhdalai et al. 2024, arXiv 2404.07143): local attention plus a compressive memory.

The sequence is cut into segments of `segment_len` tokens (the last may be shorter). In each one,
  A_dot = causal softmax attention inside the segment, RoPE at in-segment positions 0..len-1;
  A_mem = σ(Q) M / (σ(Q) z + ε), σ = ELU + 1, read from the memory before this segment (eq. 3);
  then the memory takes the segment (eq. 4 linear, eq. 5 delta):
    linear: M += σ(K)ᵀ V;  delta: M += σ(K)ᵀ (V − σ(K) M / (σ(K) z + ε));  z += Σ_t σ(K_t);
  out = sigmoid(gate) A_mem + (1 − sigmoid(gate)) A_dot per head (eq. 6).
Memory is per key/value head and read by each query head of its group. M, z, σ and the memory
arithmetic are float32 (bf16 memories overflow within a few segments). Segments run under
lax.scan with each step rematerialized, so training memory does not grow with their number;
gradients flow through the memory across segments.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from longjax.ops.attention import attention
from longjax.ops.reference import attention_mask, naive_attention
from longjax.positional import Frequencies, apply_rope

EPSILON = 1e-6  # the ε of eqs. 3 and 5
UPDATES = ("linear", "delta")


class InfiniState(NamedTuple):
  """The compressive memory of one layer: M float32[B, Hkv, Dk, Dv] and z float32[B, Hkv, Dk]."""

  memory: jax.Array
  normalizer: jax.Array


def _sigma(x):
  """σ = ELU + 1 in float32: positive features for the linear-attention memory."""
  return jax.nn.elu(x.astype(jnp.float32)) + 1.0


def _retrieve(sigma_x, state: InfiniState):
  """σ(X) [B, L, Hkv, G, Dk] -> σ(X) M / (σ(X) z + ε), float32 [B, L, Hkv, G, Dv]."""
  numerator = jnp.einsum("BLKGD,BKDE->BLKGE", sigma_x, state.memory)
  denominator = jnp.einsum("BLKGD,BKD->BLKG", sigma_x, state.normalizer) + EPSILON
  return numerator / denominator[..., None]


def _update(state: InfiniState, sigma_k, v, rule: str) -> InfiniState:
  """Write one segment: σ(K) [B, L, Hkv, Dk] (zero on padding), v float32 [B, L, Hkv, Dv]."""
  if rule == "delta":
    v = v - _retrieve(sigma_k[:, :, :, None], state)[:, :, :, 0]
  memory = state.memory + jnp.einsum("BLKD,BLKE->BKDE", sigma_k, v)
  return InfiniState(memory, state.normalizer + sigma_k.sum(axis=1))


def _local_attention(q, k, v, freqs: Frequencies | None, impl: str):
  """Causal attention inside one segment, RoPE at positions 0..L-1."""
  if freqs is not None:
    positions = jnp.broadcast_to(jnp.arange(q.shape[1]), q.shape[:2])
    q, k = apply_rope(q, positions, freqs), apply_rope(k, positions, freqs)
  if v.shape[-1] != k.shape[-1]:  # the fused kernels want one head_dim for keys and values
    return naive_attention(q, k, v, attention_mask(q.shape[1], k.shape[1], causal=True))
  return attention(q, k, v, causal=True, impl=impl)


def infini_attention(q, k, v, gate, *, segment_len: int, update: str = "linear", state=None,
                     freqs: Frequencies | None = None, impl: str = "auto"):
  """q [B, T, H, Dk], k [B, T, Hkv, Dk], v [B, T, Hkv, Dv] (pre-RoPE), gate [H] logits -> (out [B, T, H, Dv], state).

  state: (M float32[B, Hkv, Dk, Dv], z float32[B, Hkv, Dk]) carried from earlier tokens; zeros when None.
  `impl` picks the local attention kernel (see `attention`).
  """
  if update not in UPDATES:
    raise ValueError(f"infini_attention: update={update!r}; allowed: {', '.join(UPDATES)}")
  if segment_len < 1:
    raise ValueError(f"infini_attention: segment_len must be >= 1, got {segment_len}")
  batch, length, heads, key_dim = q.shape
  kv_heads, value_dim = k.shape[2], v.shape[-1]
  if heads % kv_heads:
    raise ValueError(f"infini_attention: query heads {heads} must be a multiple of key/value heads {kv_heads}")
  group = heads // kv_heads
  if state is None:
    state = (jnp.zeros((batch, kv_heads, key_dim, value_dim), jnp.float32),
             jnp.zeros((batch, kv_heads, key_dim), jnp.float32))
  state = InfiniState(*(jnp.asarray(x, jnp.float32) for x in state))
  mem_weight = jax.nn.sigmoid(gate.astype(jnp.float32)).reshape(kv_heads, group, 1)

  segments = -(-length // segment_len)
  padded = segments * segment_len

  def by_segment(x):  # [B, T, ...] -> [n, B, L, ...], zero-padded to whole segments
    x = jnp.pad(x, [(0, 0), (0, padded - length)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(batch, segments, segment_len, *x.shape[2:]), 1, 0)

  valid = (jnp.arange(padded) < length).reshape(segments, segment_len)

  @jax.checkpoint
  def step(state: InfiniState, inputs):
    q_seg, k_seg, v_seg, valid_seg = inputs
    local = _local_attention(q_seg, k_seg, v_seg, freqs, impl)
    sigma_q = _sigma(q_seg).reshape(batch, segment_len, kv_heads, group, key_dim)
    from_memory = _retrieve(sigma_q, state)
    local = local.astype(jnp.float32).reshape(from_memory.shape)
    out = mem_weight * from_memory + (1.0 - mem_weight) * local
    sigma_k = _sigma(k_seg) * valid_seg[None, :, None, None]  # padding writes nothing
    state = _update(state, sigma_k, v_seg.astype(jnp.float32), update)
    return state, out.reshape(batch, segment_len, heads, value_dim).astype(q.dtype)

  state, out = jax.lax.scan(step, state, (by_segment(q), by_segment(k), by_segment(v), valid))
  out = jnp.moveaxis(out, 0, 1).reshape(batch, padded, heads, value_dim)[:, :length]
  return out, state
