"""Self-Extend, Dual Chunk Attention and ReRoPE against a reference written pair by pair from the papers.

The reference gives every (query i, key j) pair its two positions from the paper's rule (a Python loop),
rotates q_i and k_j there with its own rotate-half RoPE, and runs one materialized softmax: no passes,
no blocks, no region maps. Gradients come from differentiating that reference.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longjax import ops, positional
from longjax.config import RopeConfig

B, T, H, KV, D = 2, 13, 4, 2, 8
FREQS = positional.frequencies(RopeConfig(rope_theta=100.0), D)
YARN = positional.frequencies(RopeConfig(rope_type="yarn", factor=4.0, original_max_position_embeddings=8,
                                         rope_theta=100.0), D)


def self_extend_pair(i, j, *, group_size, window):
  if i - j < window:
    return i, j
  return i // group_size + window - window // group_size, j // group_size


def dca_pair(i, j, *, chunk_size, local_window):
  s = chunk_size - local_window
  if i // s == j // s:
    return i % s, j % s
  if i // s - j // s == 1:
    return min(s + i % s, chunk_size - 1), j % s
  return chunk_size - 1, j % s


def rerope_pair(i, j, *, window):
  return (i, j) if i - j < window else (window, 0)


def plain_pair(i, j):
  return i, j


def reference(q, k, v, positions, freqs, pair):
  """Materialized attention with per-pair positions from `pair(i, j)` (i, j the tokens' positions)."""
  positions = np.asarray(positions)
  q_pos, k_pos = np.zeros((B, T, T), np.int32), np.zeros((B, T, T), np.int32)
  for b in range(B):
    for i in range(T):
      for j in range(i + 1):
        q_pos[b, i, j], k_pos[b, i, j] = pair(int(positions[b, i]), int(positions[b, j]))
  inv_freq, factor = freqs.inv_freq, freqs.attention_factor

  def rope(x, pos):  # x [B, T, S, h, D] at pos [B, T, S]
    angles = pos[..., None].astype(jnp.float32) * inv_freq
    cos = jnp.concatenate([jnp.cos(angles)] * 2, -1)[:, :, :, None] * factor
    sin = jnp.concatenate([jnp.sin(angles)] * 2, -1)[:, :, :, None] * factor
    half = x.shape[-1] // 2
    return x * cos + jnp.concatenate([-x[..., half:], x[..., :half]], -1) * sin

  qr = rope(jnp.broadcast_to(q[:, :, None], (B, T, T, H, D)), q_pos)
  kr = rope(jnp.broadcast_to(k[:, None], (B, T, T, KV, D)), k_pos)
  kr = jnp.repeat(kr, H // KV, axis=3)
  logits = jnp.einsum("BTSHD,BTSHD->BHTS", qr, kr) / math.sqrt(D)
  logits = jnp.where(np.tril(np.ones((T, T), bool)), logits, -jnp.inf)
  probs = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("BHTS,BSHD->BTHD", probs, jnp.repeat(v, H // KV, axis=2))


def inputs(seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(keys[0], (B, T, H, D))
  k = jax.random.normal(keys[1], (B, T, KV, D))
  v = jax.random.normal(keys[2], (B, T, KV, D))
  positions = jnp.stack([jnp.arange(T), jnp.arange(T) + 5]).astype(jnp.int32)  # row 1 starts at position 5
  return q, k, v, positions


CASES = {
    "self_extend": (lambda **kw: ops.self_extend_attention(**kw, group_size=3, window=4),
                    lambda i, j: self_extend_pair(i, j, group_size=3, window=4)),
    "self_extend_g2": (lambda **kw: ops.self_extend_attention(**kw, group_size=2, window=5),
                       lambda i, j: self_extend_pair(i, j, group_size=2, window=5)),
    "dca": (lambda **kw: ops.dca_attention(**kw, chunk_size=6, local_window=2),
            lambda i, j: dca_pair(i, j, chunk_size=6, local_window=2)),
    "dca_w1": (lambda **kw: ops.dca_attention(**kw, chunk_size=5, local_window=1),
               lambda i, j: dca_pair(i, j, chunk_size=5, local_window=1)),
    "rerope": (lambda **kw: ops.rerope_attention(**kw, window=4), lambda i, j: rerope_pair(i, j, window=4)),
}


@pytest.mark.parametrize("block_size,freqs", [(None, FREQS), (4, YARN)], ids=["direct", "blockwise-yarn"])
@pytest.mark.parametrize("name", CASES)
def test_forward_and_gradients_match_reference(name, block_size, freqs):
  op, pair = CASES[name]
  q, k, v, positions = inputs()

  def ours(q, k, v):
    return op(q=q, k=k, v=v, positions=positions, freqs=freqs, block_size=block_size)

  def theirs(q, k, v):
    return reference(q, k, v, positions, freqs, pair)

  np.testing.assert_allclose(jax.jit(ours)(q, k, v), jax.jit(theirs)(q, k, v), atol=2e-5)
  weights = jax.random.normal(jax.random.key(9), (B, T, H, D))
  grads = jax.jit(jax.grad(lambda *a: jnp.sum(ours(*a) * weights), argnums=(0, 1, 2)))(q, k, v)
  want = jax.jit(jax.grad(lambda *a: jnp.sum(theirs(*a) * weights), argnums=(0, 1, 2)))(q, k, v)
  for got, expected in zip(grads, want):
    np.testing.assert_allclose(got, expected, atol=5e-5)


def test_the_reference_has_teeth():
  """Remapping changes the output: Self-Extend with a short window differs from plain attention."""
  q, k, v, positions = inputs()
  plain = reference(q, k, v, positions, FREQS, plain_pair)
  remapped = ops.self_extend_attention(q, k, v, positions=positions, freqs=FREQS, group_size=3, window=4)
  assert float(jnp.max(jnp.abs(plain - remapped))) > 1e-2


def plain_attention(q, k, v, positions, freqs):
  q, k = positional.apply_rope(q, positions, freqs), positional.apply_rope(k, positions, freqs)
  return ops.attention(q, k, v, causal=True, impl="naive")


@pytest.mark.parametrize("op", [
    lambda **kw: ops.self_extend_attention(**kw, group_size=4, window=T + 5),
    lambda **kw: ops.dca_attention(**kw, chunk_size=T + 5 + 3, local_window=3),
    lambda **kw: ops.rerope_attention(**kw, window=T + 5),
], ids=["self_extend", "dca", "rerope"])
def test_no_remapping_inside_the_window_equals_plain_rope_attention(op):
  """Self-Extend and ReRoPE with window >= every distance, DCA with one chunk: plain causal RoPE attention."""
  q, k, v, positions = inputs()
  got = op(q=q, k=k, v=v, positions=positions, freqs=FREQS, block_size=4)
  np.testing.assert_allclose(got, plain_attention(q, k, v, positions, FREQS), atol=2e-5)


@pytest.mark.parametrize("remap", [ops.self_extend_remap(16, 8), ops.dca_remap(24, 8), ops.rerope_remap(16)],
                         ids=["self_extend", "dca", "rerope"])
def test_relative_positions_stay_inside_the_pretrained_range(remap):
  """At 8x a pre-trained length of 24, every causal pair's relative position is in [0, 24)."""
  length = 8 * 24
  pos = jnp.arange(length, dtype=jnp.int32)[None]
  region = np.asarray(remap.region(pos[:, :, None], pos[:, None, :]))[0]
  distance = np.zeros((length, length), np.int64)
  for p, (qp, kp) in enumerate(remap.passes(pos, pos)):
    here = np.asarray(qp)[0][:, None] - np.asarray(kp)[0][None, :]
    distance = np.where(region == p, here, distance)
  causal = np.tril(np.ones((length, length), bool))
  assert distance[causal].min() >= 0 and distance[causal].max() < 24


def test_cached_call_equals_the_whole_sequence():
  """Keys in a head-major cache, queries in two calls at their slots: the whole-sequence result."""
  q, k, v, positions = inputs()
  remap = ops.dca_remap(6, 2)
  whole = ops.dca_attention(q, k, v, positions=positions, freqs=FREQS, chunk_size=6, local_window=2)
  cache_k = jnp.zeros((B, KV, 16, D)).at[:, :, :T].set(jnp.swapaxes(k, 1, 2))
  cache_v = jnp.zeros((B, KV, 16, D)).at[:, :, :T].set(jnp.swapaxes(v, 1, 2))
  cache_pos = jnp.zeros((B, 16), jnp.int32).at[:, :T].set(positions)
  parts = []
  for start, stop in ((0, 9), (9, T)):
    slots = jnp.broadcast_to(jnp.arange(start, stop, dtype=jnp.int32), (B, stop - start))
    parts.append(ops.remap_attention(q[:, start:stop], cache_k, cache_v, q_positions=positions[:, start:stop],
                                     k_positions=cache_pos, freqs=FREQS, remap=remap, q_slots=slots,
                                     kv_lengths=jnp.full((B,), stop), block_size=4))
  np.testing.assert_allclose(jnp.concatenate(parts, axis=1), whole, atol=2e-5)


def test_logn_scale():
  positions = jnp.asarray([[0, 7, 15, 16, 31, 255]])
  want = [max(1.0, math.log(p + 1) / math.log(16)) for p in [0, 7, 15, 16, 31, 255]]
  np.testing.assert_allclose(ops.logn_scale(positions, 16)[0], want, rtol=1e-6)
  assert float(ops.logn_scale(positions, 16)[0, -1]) == pytest.approx(2.0)


@pytest.mark.parametrize("remap", [ops.self_extend_remap(3, 40), ops.dca_remap(96, 24), ops.rerope_remap(50)],
                         ids=["self_extend", "dca", "rerope"])
def test_whole_sequence_kernel_equals_the_cached_kernel_gqa_unaligned(remap):
  """`remap_whole_sequence` (causal block pairs, passes skipped where no pair reads them) against the cache kernel
  over all keys (the previous whole-sequence path): 9 / 3 heads, 300 tokens in blocks of 64 (the last partial),
  rows starting at different positions, and against the direct form (all keys as one block)."""
  length, heads, kv_heads, head_dim = 300, 9, 3, 16
  keys = jax.random.split(jax.random.key(3), 3)
  q = jax.random.normal(keys[0], (2, length, heads, head_dim))
  k = jax.random.normal(keys[1], (2, length, kv_heads, head_dim))
  v = jax.random.normal(keys[2], (2, length, kv_heads, head_dim))
  positions = jnp.stack([jnp.arange(length), jnp.arange(length) + 37]).astype(jnp.int32)
  freqs = positional.frequencies(RopeConfig(rope_theta=1e4), head_dim)
  new = jax.jit(lambda q, k, v: ops.remap_whole_sequence(q, k, v, positions=positions, freqs=freqs, remap=remap,
                                                         block_size=64))(q, k, v)
  slots = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), positions.shape)
  for block in (64, None):
    old = jax.jit(lambda q, k, v: ops.remap_attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2),
                                                      q_positions=positions, k_positions=positions, freqs=freqs,
                                                      remap=remap, q_slots=slots, block_size=block))(q, k, v)
    np.testing.assert_allclose(new, old, atol=2e-5)


def test_whole_sequence_memory_is_linear_in_length():
  """At 4K tokens and 9 heads the [heads, T, T] logits would take 576 MiB; the kernel's scratch stays a few
  per-pass copies of q and k plus one block pair (XLA's compiled memory analysis; nothing runs)."""
  length, heads, kv_heads, head_dim = 4096, 9, 3, 64
  q = jax.ShapeDtypeStruct((1, length, heads, head_dim), jnp.float32)
  k = jax.ShapeDtypeStruct((1, length, kv_heads, head_dim), jnp.float32)
  positions = jnp.arange(length, dtype=jnp.int32)[None]
  freqs = positional.frequencies(RopeConfig(rope_theta=1e5), head_dim)
  for remap in (ops.self_extend_remap(4, 1024), ops.dca_remap(3072, 1024), ops.rerope_remap(2048)):
    compiled = jax.jit(lambda q, k, v, remap=remap: ops.remap_whole_sequence(
        q, k, v, positions=positions, freqs=freqs, remap=remap)).lower(q, k, k).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 96 * 2**20
