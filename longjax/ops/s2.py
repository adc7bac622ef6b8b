"""Shifted sparse attention (S2-Attn, LongLoRA: Chen et al. 2023, arXiv 2309.12307, section 3.2).

With group size G, the first half of the heads attend causally inside groups [0, G), [G, 2G), ...;
the second half inside groups shifted by G/2: [0, G/2), [G/2, 3G/2), ..., [T - G/2, T).
LongLoRA's non-flash version shifts with torch.roll, so its first G/2 tokens share a group with the
last G/2 (dvlab-research/LongLoRA issues #15, #90); these are the boundaries of its flash version,
which has no such leak. Groups become batch rows, so the cost is about G / T of full attention.
"""

import jax.numpy as jnp

from longjax.ops.attention import attention


def _grouped(x, group_size: int):
  """[B, n * G, H, D] -> [B * n, G, H, D]: each group becomes a batch row."""
  batch, length, heads, head_dim = x.shape
  return x.reshape(batch * (length // group_size), group_size, heads, head_dim)


def _in_groups(q, k, v, group_size: int, impl: str):
  """Causal attention inside consecutive groups of `group_size` tokens."""
  out = attention(_grouped(q, group_size), _grouped(k, group_size), _grouped(v, group_size), causal=True, impl=impl)
  return out.reshape(q.shape)


def _in_shifted_groups(q, k, v, group_size: int, impl: str):
  """Groups [0, G/2), [G/2, 3G/2), ..., [T - G/2, T): the two half groups at the ends run as one batch."""
  half, length, batch = group_size // 2, q.shape[1], q.shape[0]
  ends = [jnp.concatenate([x[:, :half], x[:, length - half:]]) for x in (q, k, v)]  # [2B, G/2, H, D]
  ends = attention(*ends, causal=True, impl=impl)
  parts = [ends[:batch]]
  if length > group_size:
    middle = [x[:, half:length - half] for x in (q, k, v)]
    parts.append(_in_groups(*middle, group_size, impl))
  parts.append(ends[batch:])
  return jnp.concatenate(parts, axis=1)


def s2_attention(q, k, v, *, group_size: int, impl: str = "auto"):
  """q [B, T, H, D], k/v [B, T, Hkv, D] -> [B, T, H, D]; `impl` runs inside each group (see `attention`)."""
  length, heads, kv_heads = q.shape[1], q.shape[2], k.shape[2]
  if group_size < 2 or group_size % 2 or length % group_size:
    raise ValueError(f"s2_attention: group_size must be even and divide the length; got group_size={group_size}, "
                     f"length={length}")
  if k.shape[1] != length:
    raise ValueError(f"s2_attention: keys must have the queries' length {length}, got {k.shape[1]}")
  if heads % 2 or heads % kv_heads:
    raise ValueError(f"s2_attention: needs an even number of query heads, a multiple of the {kv_heads} key/value "
                     f"heads; got {heads}")
  half_heads = heads // 2
  if half_heads % (heads // kv_heads):
    # A key/value head serves query heads in both halves (e.g. one KV head): give each half its copy.
    k, v = (jnp.repeat(x, heads // kv_heads, axis=2) for x in (k, v))
  half_kv = k.shape[2] // 2
  plain = _in_groups(q[:, :, :half_heads], k[:, :, :half_kv], v[:, :, :half_kv], group_size, impl)
  shifted = _in_shifted_groups(q[:, :, half_heads:], k[:, :, half_kv:], v[:, :, half_kv:], group_size, impl)
  return jnp.concatenate([plain, shifted], axis=2)
