"""The cache kernels against references: cached attention vs the dense mask, the sink cache vs StreamingLLM's
definition written in NumPy, Infini streaming vs one `infini_attention` call."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longjax import ops, positional
from longjax.config import RopeConfig
from longjax.ops import cached
from longjax.ops.sink_cache import cache_positions


def _rand(key, shape):
  return jax.random.normal(jax.random.key(key), shape, jnp.float32)


def heads_first(*xs):
  """[B, S, Hkv, D] -> the caches' head-major [B, Hkv, S, D]."""
  return tuple(jnp.swapaxes(x, 1, 2) for x in xs)


@pytest.mark.parametrize("query_block", [256, 4], ids=["one_query_block", "query_blocks_of_4"])
@pytest.mark.parametrize("window,sinks", [(None, 0), (5, 0), (5, 2)])
@pytest.mark.parametrize("q_len,key_block", [(1, 4), (6, 4), (6, 64)])
def test_cached_attention_matches_the_dense_mask(q_len, key_block, window, sinks, query_block, monkeypatch):
  """Rows filled to different lengths; keys in blocks (some empty, some partial); GQA 6 over 2 heads; queries in
  one block or in blocks of 4 (the last partial, each reading only the key blocks its rows may see)."""
  monkeypatch.setattr(cached, "QUERY_BLOCK", query_block)
  batch, slots, heads, kv_heads, dim = 3, 19, 6, 2, 8
  q, k, v = _rand(0, (batch, q_len, heads, dim)), _rand(1, (batch, slots, kv_heads, dim)), _rand(2, (batch, slots,
                                                                                                     kv_heads, dim))
  offsets = np.asarray([0, 7, 19 - q_len])
  lengths = offsets + q_len
  out = ops.cached_attention(q, *heads_first(k, v), q_offsets=offsets, kv_lengths=lengths, window=window,
                             sinks=sinks, key_block=key_block)
  for b in range(batch):
    n = lengths[b]  # row b alone: its filled keys, its queries the last q_len of them
    mask = ops.attention_mask(q_len, n, causal=True, window=window, sinks=sinks)
    want = ops.naive_attention(q[b:b + 1], k[b:b + 1, :n], v[b:b + 1, :n], mask)
    np.testing.assert_allclose(out[b:b + 1], want, atol=1e-5)


def test_cached_attention_ignores_slots_past_the_filled_length():
  q, k, v = _rand(0, (2, 1, 4, 8)), _rand(1, (2, 16, 4, 8)), _rand(2, (2, 16, 4, 8))
  lengths = np.asarray([5, 9])
  k, v = heads_first(k, v)
  out = ops.cached_attention(q, k, v, q_offsets=lengths - 1, kv_lengths=lengths, key_block=4)
  garbage = jnp.where(jnp.arange(16)[None, None, :, None] >= lengths[:, None, None, None], 1e3, k)
  np.testing.assert_array_equal(out, ops.cached_attention(q, garbage, v, q_offsets=lengths - 1, kv_lengths=lengths,
                                                          key_block=4))


def _frequencies_at(rope, dim):
  """lengths int32[B] -> each row's frequencies: what the model's attention layer hands the streaming ops."""
  return lambda lengths: positional.frequencies_per_row(rope, dim, lengths)


def _rotate(x, positions, rope):
  freqs = positional.frequencies(rope, x.shape[-1])
  return np.asarray(positional.apply_rope(jnp.asarray(x)[None], jnp.asarray(positions)[None], freqs)[0])


def _softmax_attention(q, keys, values, group):
  """q [H, D] against keys/values [n, Hkv, D] (already rotated), float64."""
  out = []
  for h in range(q.shape[0]):
    logits = keys[:, h // group] @ q[h] / np.sqrt(q.shape[-1])
    weights = np.exp(logits - logits.max())
    out.append((weights / weights.sum()) @ values[:, h // group])
  return np.stack(out)


def test_sink_cache_is_attention_over_the_kept_tokens_at_their_reassigned_positions():
  """StreamingLLM by definition: after n tokens keep the sinks and the last `window`; number them 0.. in order;
  the query is the newest. Streamed far past sinks + window, the cache holds C slots throughout."""
  window, sinks, heads, kv_heads, dim, total = 5, 2, 4, 2, 8, 23
  rope = RopeConfig()
  q, k, v = _rand(0, (1, total, heads, dim)), _rand(1, (1, total, kv_heads, dim)), _rand(2, (1, total, kv_heads, dim))
  state = ops.init_sink_cache(1, kv_heads, dim, window=window, sinks=sinks, dtype=jnp.float32)
  outs = []
  for chunk in np.split(np.arange(total), [3, 4, 11, 12]):  # prompt, single steps and longer chunks
    sl = slice(chunk[0], chunk[-1] + 1)
    out, state = ops.sink_cache_attention(q[:, sl], k[:, sl], v[:, sl], state, jnp.ones((1, len(chunk)), bool),
                                          window=window, sinks=sinks, frequencies_at=_frequencies_at(rope, dim))
    assert state.key.shape == (1, kv_heads, window + sinks, dim)  # memory does not grow
    outs.append(out)
  got = np.asarray(jnp.concatenate(outs, axis=1)[0], np.float64)
  for n in range(1, total + 1):
    kept = sorted(set(range(min(sinks, n))) | set(range(max(0, n - window), n)))
    positions = np.arange(len(kept))
    keys = _rotate(np.asarray(k[0, kept]), positions, rope).astype(np.float64)
    query = _rotate(np.asarray(q[0, n - 1:n]), positions[-1:], rope)[0].astype(np.float64)
    want = _softmax_attention(query, keys, np.asarray(v[0, kept], np.float64), heads // kv_heads)
    np.testing.assert_allclose(got[n - 1], want, atol=1e-5, err_msg=f"token {n - 1}")


def test_sink_cache_positions():
  token = jnp.asarray([[0, 1, 9, 10, 6, 7, 8]])  # sinks 2, window 5, after 11 tokens (6..10 kept)
  np.testing.assert_array_equal(cache_positions(token, jnp.asarray([11]), window=5, sinks=2), [[0, 1, 5, 6, 2, 3, 4]])


def test_sink_cache_skips_padding():
  window, sinks = 4, 1
  q, k, v = _rand(0, (2, 6, 2, 8)), _rand(1, (2, 6, 2, 8)), _rand(2, (2, 6, 2, 8))
  valid = jnp.asarray([[True] * 6, [True] * 3 + [False] * 3])
  init = ops.init_sink_cache(2, 2, 8, window=window, sinks=sinks, dtype=jnp.float32)
  frequencies_at = _frequencies_at(RopeConfig(), 8)
  out, state = ops.sink_cache_attention(q, k, v, init, valid, window=window, sinks=sinks, frequencies_at=frequencies_at)
  alone, alone_state = ops.sink_cache_attention(q[1:, :3], k[1:, :3], v[1:, :3], jax.tree.map(lambda x: x[1:], init),
                                                valid[1:, :3], window=window, sinks=sinks,
                                                frequencies_at=frequencies_at)
  np.testing.assert_array_equal(np.asarray(state.length), [6, 3])
  np.testing.assert_allclose(out[1:, :3], alone, atol=1e-6)
  for got, want in zip(jax.tree.leaves(jax.tree.map(lambda x: x[1:], state)), jax.tree.leaves(alone_state)):
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_infini_streaming_equals_one_call(update):
  """Streaming in uneven chunks (a segment boundary inside a chunk, single tokens) gives the outputs of one
  `infini_attention` call over the whole sequence; GQA 4 over 2; RoPE in the local attention."""
  segment_len, total, heads, kv_heads, dim = 4, 19, 4, 2, 8
  rope = RopeConfig()
  q, k, v = (_rand(i, (2, total, h, dim)) for i, h in enumerate((heads, kv_heads, kv_heads)))
  gate = jnp.asarray([-1.0, 0.0, 0.5, 2.0])
  whole, _ = ops.infini_attention(q, k, v, gate, segment_len=segment_len, update=update,
                                  freqs=positional.frequencies(rope, dim), impl="naive")
  state = ops.init_infini_cache(2, kv_heads, dim, dim, segment_len=segment_len, dtype=jnp.float32)
  outs = []
  for chunk in np.split(np.arange(total), [6, 7, 8, 15]):
    sl = slice(chunk[0], chunk[-1] + 1)
    out, state = ops.infini_cache_attention(q[:, sl], k[:, sl], v[:, sl], gate, state,
                                            jnp.ones((2, len(chunk)), bool), update=update,
                                            frequencies_at=_frequencies_at(rope, dim))
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), whole, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(state.length), [total, total])


def test_chunked_prefill_never_materializes_the_score_matrix():
  """XLA's compiled memory for 512 queries against a 16K-slot cache: the [T, S] scores of 4 heads would be
  128 MiB in float32; the kernel holds one [T, key_block] block per head."""
  q = jax.ShapeDtypeStruct((1, 512, 4, 64), jnp.float32)
  kv = jax.ShapeDtypeStruct((1, 4, 16384, 64), jnp.float32)
  lengths = jax.ShapeDtypeStruct((1,), jnp.int32)
  compiled = jax.jit(lambda q, k, v, off, n: ops.cached_attention(q, k, v, q_offsets=off, kv_lengths=n,
                                                                  key_block=512)).lower(q, kv, kv, lengths,
                                                                                        lengths).compile()
  scores = 512 * 16384 * 4 * 4
  assert compiled.memory_analysis().temp_size_in_bytes < scores / 8
