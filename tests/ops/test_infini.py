"""Infini-attention against a float64 NumPy loop over the paper's equations, state carry and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longjax import ops
from longjax.config import RopeConfig
from longjax.positional import frequencies

EPSILON = 1e-6


def _elu_plus_one(x):
  return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def _rope(x, positions):
  """Rotate-half RoPE, inv_freq_i = 10000^(-2i/D): x [L, D] at positions [L]."""
  dim = x.shape[-1]
  inv_freq = 10000.0 ** (-np.arange(0, dim, 2) / dim)
  angles = np.concatenate([positions[:, None] * inv_freq] * 2, axis=-1)
  rotated_half = np.concatenate([-x[:, dim // 2:], x[:, :dim // 2]], axis=-1)
  return x * np.cos(angles) + rotated_half * np.sin(angles)


def _reference(q, k, v, gate, segment_len, update, rope, memory=None, normalizer=None):
  """Segment by segment, head by head, token by token (arXiv 2404.07143 eqs. 3-6), in float64."""
  q, k, v, gate = (np.asarray(x, np.float64) for x in (q, k, v, gate))
  batch, length, heads, key_dim = q.shape
  kv_heads, value_dim = k.shape[2], v.shape[-1]
  group = heads // kv_heads
  memory = np.zeros((batch, kv_heads, key_dim, value_dim)) if memory is None else np.array(memory, np.float64)
  normalizer = np.zeros((batch, kv_heads, key_dim)) if normalizer is None else np.array(normalizer, np.float64)
  out = np.zeros((batch, length, heads, value_dim))
  for start in range(0, length, segment_len):
    stop = min(start + segment_len, length)
    positions = np.arange(stop - start, dtype=np.float64)
    for b in range(batch):
      for h in range(heads):
        kv = h // group
        q_seg, k_seg, v_seg = q[b, start:stop, h], k[b, start:stop, kv], v[b, start:stop, kv]
        q_rot, k_rot = (_rope(q_seg, positions), _rope(k_seg, positions)) if rope else (q_seg, k_seg)
        mem_weight = 1.0 / (1.0 + np.exp(-gate[h]))
        for t in range(stop - start):
          logits = k_rot[:t + 1] @ q_rot[t] / np.sqrt(key_dim)
          probs = np.exp(logits - logits.max())
          local = (probs / probs.sum()) @ v_seg[:t + 1]
          sigma_q = _elu_plus_one(q_seg[t])
          from_memory = sigma_q @ memory[b, kv] / (sigma_q @ normalizer[b, kv] + EPSILON)
          out[b, start + t, h] = mem_weight * from_memory + (1 - mem_weight) * local
    for b in range(batch):
      for kv in range(kv_heads):
        sigma_k = _elu_plus_one(k[b, start:stop, kv])
        values = v[b, start:stop, kv]
        if update == "delta":
          values = values - (sigma_k @ memory[b, kv]) / (sigma_k @ normalizer[b, kv] + EPSILON)[:, None]
        memory[b, kv] = memory[b, kv] + sigma_k.T @ values
        normalizer[b, kv] = normalizer[b, kv] + sigma_k.sum(axis=0)
  return out, (memory, normalizer)


def _inputs(length, value_dim=8, seed=0, batch=2, heads=4, kv_heads=2, key_dim=8):
  rng = np.random.default_rng(seed)
  shapes = [(batch, length, heads, key_dim), (batch, length, kv_heads, key_dim), (batch, length, kv_heads, value_dim),
            (heads,)]
  return tuple(jnp.asarray(rng.standard_normal(shape, np.float32)) for shape in shapes)


@pytest.mark.parametrize("update", ["linear", "delta"])
@pytest.mark.parametrize("length,segment_len,rope,value_dim", [
    (16, 16, False, 8),  # one segment: the memory is empty, only local attention
    (48, 16, True, 8),  # three segments
    (40, 16, True, 8),  # a partial last segment
    (40, 16, False, 6),  # values narrower than keys
])
def test_matches_numpy_equations(update, length, segment_len, rope, value_dim):
  q, k, v, gate = _inputs(length, value_dim)
  freqs = frequencies(RopeConfig(), q.shape[-1]) if rope else None
  out, state = jax.jit(lambda q, k, v, gate: ops.infini_attention(
      q, k, v, gate, segment_len=segment_len, update=update, freqs=freqs))(q, k, v, gate)
  expected, expected_state = _reference(q, k, v, gate, segment_len, update, rope)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  for got, want in zip(state, expected_state):
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_two_halves_with_carried_state_equal_one_call(update):
  q, k, v, gate = _inputs(64)
  freqs = frequencies(RopeConfig(), q.shape[-1])
  run = jax.jit(lambda q, k, v, state: ops.infini_attention(
      q, k, v, gate, segment_len=16, update=update, state=state, freqs=freqs))
  whole, whole_state = run(q, k, v, None)
  first, state = run(q[:, :32], k[:, :32], v[:, :32], None)
  second, second_state = run(q[:, 32:], k[:, 32:], v[:, 32:], state)
  np.testing.assert_allclose(jnp.concatenate([first, second], axis=1), whole, rtol=1e-5, atol=1e-6)
  for got, want in zip(second_state, whole_state):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_gate_and_flow_through_the_memory():
  segment_len = 8
  q, k, v, gate = _inputs(32)
  projection = jnp.asarray(np.random.default_rng(5).standard_normal(q.shape, np.float32))

  def loss(q, k, v, gate, segment):
    out, _ = ops.infini_attention(q, k, v, gate, segment_len=segment_len, update="delta")
    rows = slice(segment * segment_len, (segment + 1) * segment_len)
    return jnp.sum(out[:, rows] * projection[:, rows])

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)), static_argnums=4)(q, k, v, gate, 1)
  assert all(np.isfinite(g).all() for g in grads)
  assert np.all(np.abs(grads[3]) > 0)  # every head's gate
  # Segment 2 reads segment 1's keys and values only through the memory; later ones never.
  for d_memory_input in grads[1:3]:
    assert np.all(np.abs(d_memory_input[:, :segment_len]).sum(axis=(2, 3)) > 0)
    assert np.all(d_memory_input[:, 2 * segment_len:] == 0)


def test_bad_update_raises():
  q, k, v, gate = _inputs(8)
  with pytest.raises(ValueError, match="update='hebbian'"):
    ops.infini_attention(q, k, v, gate, segment_len=4, update="hebbian")
