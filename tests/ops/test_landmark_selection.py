"""Which blocks top-k landmark retrieval picks, against a NumPy reference of the scoring rule.

The rule (longjax/ops/landmark.py, after the reference's one position for all older landmarks): a query at slot
t of block b scores every complete earlier block's landmark key as if that landmark sat at the landmark slot of
the first of the k block slots just before b, i.e. at position (b - k) * block + block - 1, with RoPE
(rotate-half) on both; it retrieves the k best, ties and all. Every ordinary token of block n carries the value
e_n (one-hot), so a query's output has weight on e_n (n < b) exactly when block n was retrieved.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longjax import ops, positional
from longjax.config import RopeConfig

BLOCK = 4  # three ordinary tokens and a landmark
BLOCKS = 8
LENGTH = BLOCK * BLOCKS - 1  # the last block is open
THETA = 10000.0


def _rope(x, position, dim):
  """Rotate-half RoPE of x [..., D] at one integer position (NumPy, float64)."""
  inv_freq = 1.0 / THETA ** (np.arange(0, dim, 2) / dim)
  angle = position * inv_freq
  cos, sin = np.concatenate([np.cos(angle)] * 2), np.concatenate([np.sin(angle)] * 2)
  half = x.shape[-1] // 2
  rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin


def reference_retrieved(q, k, topk):
  """q [B, T, H, D], k [B, T, Hkv, D] before RoPE -> retrieved[b][t][h] = the set of blocks the rule picks."""
  batch, length, heads, dim = q.shape
  group = heads // k.shape[2]
  out = []
  for b in range(batch):
    rows = []
    for t in range(length):
      own = t // BLOCK
      taken = min(topk, BLOCKS)
      anchor = (own - taken) * BLOCK + BLOCK - 1
      per_head = []
      for h in range(heads):
        query = _rope(np.float64(q[b, t, h]), t, dim)
        scores = [query @ _rope(np.float64(k[b, n * BLOCK + BLOCK - 1, h // group]), anchor, dim) for n in range(own)]
        order = np.argsort(scores)[::-1][:taken]
        per_head.append(frozenset(int(n) for n in order))
      rows.append(per_head)
    out.append(rows)
  return out


@functools.partial(jax.jit, static_argnames="topk")
def _prefill(q, k, v, *, topk):
  batch, length, _, dim = q.shape
  state = ops.init_landmark_cache(batch, length, k.shape[2], dim, block=BLOCK, dtype=jnp.float32)
  freqs = positional.frequencies(RopeConfig(rope_theta=THETA), dim)
  out, _ = ops.landmark_cache_attention(q, k, v, state, jnp.ones((batch, length), bool), block=BLOCK, topk=topk,
                                        freqs=freqs)
  return out


def _one_hot_values(batch, kv_heads, dim):
  """v [B, T, Hkv, dim] (the cache holds values of the key width): e_n at the ordinary tokens of block n, 0 at
  landmarks."""
  slots = np.arange(LENGTH)
  v = np.eye(dim, dtype=np.float32)[slots // BLOCK] * (slots % BLOCK != BLOCK - 1)[:, None]
  return jnp.asarray(np.broadcast_to(v[None, :, None], (batch, LENGTH, kv_heads, dim)))


def retrieved_by_longjax(q, k, topk):
  out = np.asarray(_prefill(q, k, _one_hot_values(q.shape[0], k.shape[2], q.shape[-1]), topk=topk))
  return [[[frozenset(n for n in range(t // BLOCK) if out[b, t, h, n] > 1e-7) for h in range(q.shape[2])]
           for t in range(q.shape[1])] for b in range(q.shape[0])]


@pytest.mark.parametrize("topk", [1, 2, 3])
def test_retrieved_blocks_follow_the_landmark_scoring_rule(topk):
  """Every query (all slots, 4 query heads over 2 key/value heads, 2 rows) retrieves exactly the blocks the rule
  picks; scoring the landmarks a few positions off (another anchor) picks other blocks for some queries."""
  batch, heads, kv_heads, dim = 2, 4, 2, 16
  keys = jax.random.split(jax.random.key(7), 2)
  q = jax.random.normal(keys[0], (batch, LENGTH, heads, dim), jnp.float32)
  k = jax.random.normal(keys[1], (batch, LENGTH, kv_heads, dim), jnp.float32)
  got = retrieved_by_longjax(q, k, topk)
  want = reference_retrieved(np.asarray(q), np.asarray(k), topk)
  mismatches = [(b, t, h, got[b][t][h], want[b][t][h]) for b in range(batch) for t in range(LENGTH)
                for h in range(heads) if got[b][t][h] != want[b][t][h]]
  assert not mismatches, mismatches[:10]
  assert all(len(want[b][t][h]) == min(topk, t // BLOCK) for b in range(batch) for t in range(LENGTH)
             for h in range(heads))


def test_top1_retrieval_depends_on_the_scoring_position():
  """The case the rule decides: with k = 1 the anchor is the landmark slot just before the own block; the same
  keys scored at the start of that block (an off-by-(block - 1) anchor) would pick another block somewhere."""
  batch, heads, kv_heads, dim = 2, 4, 2, 16
  keys = jax.random.split(jax.random.key(7), 2)
  q = np.asarray(jax.random.normal(keys[0], (batch, LENGTH, heads, dim), jnp.float32))
  k = np.asarray(jax.random.normal(keys[1], (batch, LENGTH, kv_heads, dim), jnp.float32))
  got = retrieved_by_longjax(jnp.asarray(q), jnp.asarray(k), 1)
  shifted = 0
  for b in range(batch):
    for t in range(BLOCK, LENGTH):
      own = t // BLOCK
      for h in range(heads):
        query = _rope(np.float64(q[b, t, h]), t, dim)
        scores = [query @ _rope(np.float64(k[b, n * BLOCK + BLOCK - 1, h // 2]), (own - 1) * BLOCK, dim)
                  for n in range(own)]
        shifted += got[b][t][h] != {int(np.argmax(scores))}
  assert shifted > 0  # the check above is sharp enough to see an anchor off by block - 1
