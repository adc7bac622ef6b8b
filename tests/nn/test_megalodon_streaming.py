"""MEGALODON's streaming pieces alone against NumPy loops: the CEMA state held on padding, the open chunk's K/V
(slot = tokens so far mod chunk, RoPE at the slot, attention over slots 0..slot), the empty states and the final
norm's statistics. Small and unjitted: test_megalodon.py's streaming-equals-full-pass tests check the same through
whole models, slowly."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longjax import ops, positional
from longjax.config import MegalodonConfig, ModelConfig, RopeConfig
from longjax.nn import megalodon as megalodon_lib
from longjax.ops import megalodon as megalodon_ops

BATCH, LENGTH, WIDTH, EMA_DIM = 2, 7, 3, 2
HEADS, KEY_DIM, VALUE_DIM, CHUNK = 2, 4, 3, 4


def _complex(rng, *shape):
  return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


@pytest.mark.parametrize("with_h0", [False, True])
def test_masked_last_state_holds_the_state_on_padding(with_h0):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(BATCH, LENGTH, WIDTH)).astype(np.float32)
  p = rng.uniform(0.1, 0.9, size=(WIDTH, EMA_DIM)).astype(np.float32)
  q = 0.8 * _complex(rng, WIDTH, EMA_DIM)
  h0 = _complex(rng, BATCH, WIDTH, EMA_DIM) if with_h0 else None
  valid = np.array([[True] * 4 + [False] * 3, [True, False, True, True, True, False, True]])

  h = np.zeros((BATCH, WIDTH, EMA_DIM), np.complex64) if h0 is None else h0.copy()
  for b in range(BATCH):
    for t in range(LENGTH):
      if valid[b, t]:
        h[b] = p * x[b, t][:, None] + q * h[b]

  got = megalodon_ops.cema_last_state(jnp.asarray(x), jnp.asarray(p), jnp.asarray(q),
                                         None if h0 is None else jnp.asarray(h0), jnp.asarray(valid))
  assert got.shape == (BATCH, WIDTH, EMA_DIM) and got.dtype == jnp.complex64
  np.testing.assert_allclose(np.asarray(got), h, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_padding", [False, True])
def test_stream_chunk_attention_follows_the_open_chunk(with_padding):
  rng = np.random.default_rng(1)
  q = rng.normal(size=(BATCH, LENGTH, HEADS, KEY_DIM)).astype(np.float32)
  k = rng.normal(size=(BATCH, LENGTH, HEADS, KEY_DIM)).astype(np.float32)
  v = rng.normal(size=(BATCH, LENGTH, HEADS, VALUE_DIM)).astype(np.float32)
  key0 = rng.normal(size=(BATCH, HEADS, CHUNK, KEY_DIM)).astype(np.float32)
  value0 = rng.normal(size=(BATCH, HEADS, CHUNK, VALUE_DIM)).astype(np.float32)
  filled0 = np.array([0, 3], np.int32)  # row 1 resumes inside a chunk, with its first 3 slots already written
  valid = np.array([[True] * 5 + [False] * 2, [True] * LENGTH]) if with_padding else np.ones((BATCH, LENGTH), bool)
  freqs = positional.frequencies(RopeConfig(), KEY_DIM)
  out, (key, value, filled) = megalodon_ops.stream_chunk_attention(
      jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(key0), jnp.asarray(value0), jnp.asarray(filled0),
      jnp.asarray(valid) if with_padding else None, freqs, CHUNK)

  # token t of row b sits at slot (filled0 + real tokens before it) % chunk; the project's RoPE turns it there
  slots = (filled0[:, None] + np.cumsum(valid, axis=1) - valid) % CHUNK
  q_rot, k_rot = (np.asarray(positional.apply_rope(jnp.asarray(t), jnp.asarray(slots), freqs)) for t in (q, k))
  want_key, want_value, want_filled = key0.copy(), value0.copy(), filled0.copy()
  for b in range(BATCH):
    for t in range(LENGTH):
      if not valid[b, t]:
        continue
      slot = slots[b, t]
      q_t = q_rot[b, t]
      want_key[b, :, slot] = k_rot[b, t]
      want_value[b, :, slot] = v[b, t]
      logits = np.einsum("hd,hsd->hs", q_t, want_key[b, :, :slot + 1]) / np.sqrt(KEY_DIM)
      weights = np.exp(logits - logits.max(-1, keepdims=True))
      weights /= weights.sum(-1, keepdims=True)
      np.testing.assert_allclose(np.asarray(out[b, t]), np.einsum("hs,hse->he", weights, want_value[b, :, :slot + 1]),
                                 rtol=1e-4, atol=1e-5, err_msg=f"row {b} step {t}")
      want_filled[b] += 1
  assert out.shape == (BATCH, LENGTH, HEADS, VALUE_DIM)
  np.testing.assert_allclose(np.asarray(key), want_key, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(value), want_value)
  np.testing.assert_array_equal(np.asarray(filled), want_filled)


def test_empty_states_have_the_configured_shapes():
  config = ModelConfig(block="megalodon", vocab_size=64, hidden_size=12, intermediate_size=16, num_layers=1,
                       num_heads=2, num_kv_heads=2,
                       megalodon=MegalodonConfig(z_dim=8, value_dim=10, ema_dim=3, chunk_size=5, norm_groups=4))
  state = megalodon_lib.MegalodonBlock.init_state(config, 2, 1000, jnp.bfloat16)
  want = {"cema_h": ((2, 12, 3), jnp.complex64), "norm_count": ((2,), jnp.int32),
          "norm_mean": ((2, 4), jnp.float32), "norm_var": ((2, 4), jnp.float32),
          "key": ((2, 2, 5, 4), jnp.bfloat16), "value": ((2, 2, 5, 5), jnp.bfloat16), "length": ((2,), jnp.int32)}
  for name, (shape, dtype) in want.items():
    field = getattr(state, name)
    assert (field.shape, field.dtype) == (shape, dtype), name
    assert not np.asarray(field).any(), name
  final = megalodon_lib.MegalodonBlock.init_final_state(config, 3)
  for got, want_field in zip(final, ops.init_timestep_norm_state(3, 4)):
    assert (got.shape, got.dtype) == (want_field.shape, want_field.dtype) and not np.asarray(got).any()


def test_final_norm_continues_its_state_and_leaves_padding_out():
  config = ModelConfig(block="megalodon", vocab_size=64, hidden_size=8, intermediate_size=16, num_layers=1,
                       num_heads=2, num_kv_heads=2, megalodon=MegalodonConfig(norm_groups=2, norm_eps=0.5))

  class Head(nn.Module):
    @nn.compact
    def __call__(self, x, valid, state):
      return megalodon_lib.MegalodonBlock.final_norm(config, x, valid, state)

  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 8)).astype(np.float32))
  valid = jnp.asarray(np.array([[True] * 5, [True] * 3 + [False] * 2]))
  zero = jnp.zeros(8)
  want_first, want_state = ops.timestep_norm(x[:, :2], zero, zero, num_groups=2, eps=0.5, mask=valid[:, :2])
  want_y, want_state = ops.timestep_norm(x[:, 2:], zero, zero, num_groups=2, eps=0.5, state=want_state,
                                         mask=valid[:, 2:])
  params = nn.unbox(Head().init(jax.random.key(0), x, valid, None))
  assert jax.tree.map(jnp.shape, params) == {"params": {"norm": {"weight": (8,), "bias": (8,)}}}
  first, state = Head().apply(params, x[:, :2], valid[:, :2], None)
  y, state = Head().apply(params, x[:, 2:], valid[:, 2:], state)
  np.testing.assert_array_equal(np.asarray(state[0]), [5, 3])
  for got, want in zip(state, want_state):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(first), np.asarray(want_first), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(y)[np.asarray(valid[:, 2:])], np.asarray(want_y)[np.asarray(valid[:, 2:])],
                             rtol=1e-5, atol=1e-6)


def _chunked_reference(q, k, v, chunk):
  """Causal softmax attention inside each chunk of `chunk` tokens (the last partial), NumPy per chunk."""
  want = np.zeros(q.shape[:3] + v.shape[3:], np.float64)
  for start in range(0, q.shape[1], chunk):
    qc, kc, vc = (t[0, start:start + chunk] for t in (q, k, v))
    logits = np.einsum("qhd,khd->hqk", qc, kc) / np.sqrt(q.shape[-1])
    logits = np.where(np.tril(np.ones((len(qc), len(qc)), bool)), logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    want[0, start:start + chunk] = np.einsum("hqk,khd->qhd", weights / weights.sum(-1, keepdims=True), vc)
  return want


@pytest.mark.parametrize("length", [CHUNK + 3, 2 * CHUNK + 1])
def test_chunked_attention_of_two_and_three_chunks(length):
  rng = np.random.default_rng(3)
  q, k, v = (rng.normal(size=(1, length, HEADS, KEY_DIM)).astype(np.float32) for _ in range(3))
  got = megalodon_ops.chunked_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), CHUNK, "auto")
  np.testing.assert_allclose(np.asarray(got), _chunked_reference(q, k, v, CHUNK), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("length, heads, key_dim", [(12, 12, 8), (5, 8, 8)])
def test_chunked_attention_with_wider_values_whatever_the_other_sizes(length, heads, key_dim):
  """Values wider than keys (MEGALODON's v_head > z_head) take the naive path whichever other size equals the value
  width: the sequence length and the head count (12), or the heads and the key width (8)."""
  rng = np.random.default_rng(4)
  q, k = (rng.normal(size=(1, length, heads, key_dim)).astype(np.float32) for _ in range(2))
  v = rng.normal(size=(1, length, heads, 12)).astype(np.float32)
  got = megalodon_ops.chunked_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), CHUNK, "auto")
  np.testing.assert_allclose(np.asarray(got), _chunked_reference(q, k, v, CHUNK), rtol=1e-4, atol=1e-5)


def test_chunked_attention_passes_its_impl_on():
  q = jnp.zeros((1, 6, HEADS, KEY_DIM))
  with pytest.raises(ValueError, match="impl='nope' is not available"):
    megalodon_ops.chunked_attention(q, q, q, CHUNK, "nope")
