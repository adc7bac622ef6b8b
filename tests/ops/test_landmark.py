"""Landmark attention against the grouped softmax written as a loop (forward and gradients), its invariances,
the blockwise form, and top-k retrieval decoding against full landmark attention."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longjax import ops, positional
from longjax.config import RopeConfig

# Three rows, 13 tokens, landmarks (1) in different layouts: every 4th token with a partial last block; an
# irregular layout; a row that starts inside a block (its first landmark at index 1) and starts with a landmark.
LAYOUTS = np.asarray([[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0],
                      [0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0],
                      [0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1]], bool)
landmark_attention = jax.jit(ops.landmark_attention, static_argnames=("causal", "query_block"))


def _rand(key, shape):
  return jax.random.normal(jax.random.key(key), shape, jnp.float32)


def _inputs(heads=4, kv_heads=2, dim=8):
  batch, length = LAYOUTS.shape
  return _rand(0, (batch, length, heads, dim)), _rand(1, (batch, length, kv_heads, dim)), _rand(2, (batch, length,
                                                                                                   kv_heads, dim))


def reference(q, k, v, is_landmark, causal=True):
  """The issue's definition, one query at a time, in NumPy."""
  batch, length, heads, dim = q.shape
  group = heads // k.shape[2]
  rows = []
  for b in range(batch):
    lm = [bool(x) for x in is_landmark[b]]
    block = np.cumsum(lm) - np.asarray(lm, int)
    kh, vh = k[b][:, np.arange(heads) // group], v[b][:, np.arange(heads) // group]  # [T, H, D]
    outs = []
    for t in range(length):
      own = [j for j in range(t + 1 if causal else length) if block[j] == block[t] and not lm[j]]
      landmarks = [j for j in range(t) if lm[j] and block[j] < block[t]]
      members = own + landmarks
      if not members:
        outs.append(np.zeros((heads, v.shape[-1]), np.float32))
        continue
      scores = np.einsum("HD,JHD->HJ", q[b, t], kh[np.asarray(members)]) / np.sqrt(dim)
      probs = np.exp(scores - np.max(scores, axis=1, keepdims=True))
      probs = probs / np.sum(probs, axis=1, keepdims=True)
      out = np.einsum("HJ,JHD->HD", probs[:, :len(own)], vh[np.asarray(own, int)])
      for i, landmark in enumerate(landmarks):
        tokens = [j for j in range(landmark) if block[j] == block[landmark] and not lm[j]]
        if not tokens:  # a landmark that closes an empty block: its weight goes nowhere
          continue
        tokens = np.asarray(tokens)
        inner = np.einsum("HD,JHD->HJ", q[b, t], kh[tokens]) / np.sqrt(dim)
        inner = np.exp(inner - np.max(inner, axis=1, keepdims=True))
        inner = inner / np.sum(inner, axis=1, keepdims=True)
        out = out + probs[:, len(own) + i, None] * np.einsum("HJ,JHD->HD", inner, vh[tokens])
      outs.append(out)
    rows.append(np.stack(outs))
  return np.stack(rows)


@pytest.mark.parametrize("query_block,causal", [(None, True), (5, True), (5, False)])
def test_matches_the_grouped_softmax_loop(query_block, causal):
  q, k, v = _inputs()
  out = landmark_attention(q, k, v, LAYOUTS, query_block=query_block, causal=causal)
  np.testing.assert_allclose(out, reference(*map(np.asarray, (q, k, v)), LAYOUTS, causal), atol=2e-5, rtol=1e-5)


def masked_reference(q, k, v, is_landmark):
  """The same definition as masked softmaxes in jax.numpy (one per block), to differentiate; masks from loops."""
  batch, length, heads, dim = q.shape
  kh, vh = (jnp.repeat(x, heads // k.shape[2], axis=2) for x in (k, v))
  scores = jnp.einsum("BTHD,BSHD->BHTS", q, kh) / np.sqrt(dim)
  blocks = [np.cumsum(row) - row for row in is_landmark.astype(int)]
  own = np.zeros((batch, 1, length, length), bool)
  landmark_of = np.zeros((length,) + own.shape, bool)  # [g]: query t sees the landmark of an earlier block g
  members = np.zeros_like(landmark_of)  # [g]: query t sees the ordinary keys of an earlier block g
  for b in range(batch):
    for t in range(length):
      for j in range(length):
        g = blocks[b][j]
        own[b, 0, t, j] = g == blocks[b][t] and not is_landmark[b, j] and j <= t
        landmark_of[g, b, 0, t, j] = g < blocks[b][t] and is_landmark[b, j]
        members[g, b, 0, t, j] = g < blocks[b][t] and not is_landmark[b, j]
  probs = jax.nn.softmax(jnp.where(own | landmark_of.any(axis=0), scores, -jnp.inf), axis=-1)
  out = jnp.einsum("BHTS,BSHD->BTHD", jnp.where(own, probs, 0.0), vh)
  for g in range(length):
    gate = jnp.sum(jnp.where(landmark_of[g], probs, 0.0), axis=-1, keepdims=True)
    inner = jnp.where(members[g], jax.nn.softmax(jnp.where(members[g], scores, -jnp.inf), axis=-1), 0.0)
    out += jnp.einsum("BHTS,BSHD->BTHD", gate * inner, vh)
  return out


def test_gradients_match_the_masked_definition():
  q, k, v = _inputs()
  weights = _rand(3, q.shape)
  np.testing.assert_allclose(masked_reference(q, k, v, LAYOUTS), reference(*map(np.asarray, (q, k, v)), LAYOUTS),
                             atol=2e-5, rtol=1e-5)
  ours = jax.jit(jax.grad(lambda *x: jnp.sum(ops.landmark_attention(*x, LAYOUTS, query_block=5) * weights),
                          (0, 1, 2)))
  theirs = jax.jit(jax.grad(lambda *x: jnp.sum(masked_reference(*x, LAYOUTS) * weights), (0, 1, 2)))
  for ours_grad, theirs_grad in zip(ours(q, k, v), theirs(q, k, v)):
    np.testing.assert_allclose(ours_grad, theirs_grad, atol=5e-5, rtol=1e-4)


def test_values_at_landmarks_are_never_read():
  q, k, v = _inputs()
  changed = jnp.where(LAYOUTS[:, :, None, None], 100.0, v)
  np.testing.assert_array_equal(landmark_attention(q, k, v, LAYOUTS),
                                landmark_attention(q, k, changed, LAYOUTS))


def test_no_future_leak():
  q, k, v = _inputs()
  cut = 7
  future = jnp.arange(LAYOUTS.shape[1])[None, :, None, None] > cut
  layouts = LAYOUTS.copy()
  layouts[:, cut + 1:] = ~layouts[:, cut + 1:]
  out = landmark_attention(q, k, v, LAYOUTS)
  other = landmark_attention(jnp.where(future, 3.0, q), jnp.where(future, -2.0, k), jnp.where(future, 5.0, v),
                                 layouts)
  np.testing.assert_array_equal(out[:, :cut + 1], other[:, :cut + 1])
  assert not np.allclose(out[:, cut + 1:], other[:, cut + 1:])


def test_one_block_without_landmarks_is_causal_attention():
  q, k, v = _inputs()
  none = np.zeros(LAYOUTS.shape, bool)
  mask = ops.attention_mask(q.shape[1], q.shape[1])
  np.testing.assert_allclose(landmark_attention(q, k, v, none), ops.naive_attention(q, k, v, mask), atol=1e-6)


def test_segments_keep_documents_apart():
  q, k, v = _inputs()
  segments = np.asarray([[1] * 6 + [2] * 7] * 3)
  out = landmark_attention(q, k, v, LAYOUTS, segment_ids=segments)
  second = landmark_attention(q[:, 6:], k[:, 6:], v[:, 6:], LAYOUTS[:, 6:])
  np.testing.assert_allclose(out[:, 6:], second, atol=1e-6)


BLOCK = 4  # three ordinary tokens and a landmark
ROPE = RopeConfig()


@functools.partial(jax.jit, static_argnames="topk")
def _step(q, k, v, state, valid, *, topk):
  freqs = positional.frequencies(ROPE, q.shape[-1])
  return ops.landmark_cache_attention(q, k, v, state, valid, block=BLOCK, topk=topk, freqs=freqs)


def _decode(q, k, v, *, topk, prefill):
  """Feed the first `prefill` tokens in one call, then one token a call; every query's output, [B, T, H, D]."""
  batch, length, heads, dim = q.shape
  state = ops.init_landmark_cache(batch, length, k.shape[2], dim, block=BLOCK, dtype=jnp.float32)
  outs = []
  for start, stop in [(0, prefill)] + [(t, t + 1) for t in range(prefill, length)]:
    valid = jnp.ones((batch, stop - start), bool)
    out, state = _step(q[:, start:stop], k[:, start:stop], v[:, start:stop], state, valid, topk=topk)
    outs.append(out)
  return jnp.concatenate(outs, axis=1)


@jax.jit
def _full(q, k, v):
  positions = jnp.broadcast_to(jnp.arange(q.shape[1]), q.shape[:2])
  freqs = positional.frequencies(ROPE, q.shape[-1])
  q_rot, k_rot = positional.apply_rope(q, positions, freqs), positional.apply_rope(k, positions, freqs)
  return ops.landmark_attention(q_rot, k_rot, v, ops.is_landmark_position(positions, BLOCK))


def test_retrieval_covering_every_block_is_full_landmark_attention():
  """k = 5: exactly the last query's five earlier blocks; earlier queries leave some of the k slots empty."""
  batch, length, heads, kv_heads, dim = 2, 22, 4, 2, 8
  q, k, v = _rand(0, (batch, length, heads, dim)), _rand(1, (batch, length, kv_heads, dim)), _rand(
      2, (batch, length, kv_heads, dim))
  np.testing.assert_allclose(_decode(q, k, v, topk=5, prefill=9), _full(q, k, v), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("topk", [1, 2])
def test_with_fewer_blocks_only_the_retrieved_ones_matter(topk):
  """One head: the last query's output moves when a block's values move only for exactly topk earlier blocks."""
  length, dim = 22, 8  # blocks 0..4 complete, the query in block 5
  q, k, v = _rand(0, (1, length, 1, dim)), _rand(1, (1, length, 1, dim)), _rand(2, (1, length, 1, dim))
  last = _decode(q, k, v, topk=topk, prefill=length - 1)[:, -1]
  moved = []
  for block in range(5):
    slots = jnp.arange(length)[None, :, None, None] // BLOCK == block
    moved.append(not np.allclose(last, _decode(q, k, jnp.where(slots, v + 1.0, v), topk=topk,
                                               prefill=length - 1)[:, -1]))
  assert sum(moved) == topk
  assert not np.allclose(last, _full(q, k, v)[:, -1])
