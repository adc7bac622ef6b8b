"""StreamingLLM's cache read a chunk at a time (`ops.kv_compress.sink_chunk_attention`) against a NumPy loop of its
definition (a query sees the sinks and newest `window` tokens kept before its chunk, at positions 0..kept-1, plus
its chunk's tokens up to itself at the positions that follow) and against the one-token path
(`ops.sink_cache_attention`): the same state after every chunk, the same outputs while no token before the query
has been evicted, different ones after (the chunk's queries also see the tokens evicted within the chunk)."""

import jax
import jax.numpy as jnp
import numpy as np

from longjax import ops, positional
from longjax.config import RopeConfig
from longjax.ops.kv_compress import sink_chunk_attention

B, H, HKV, D, SINKS, WINDOW = 2, 4, 2, 8, 2, 5
SLOTS = SINKS + WINDOW
CHUNKS = (3, 6, 4, 7)  # 20 tokens; the cache (7 slots) first evicts in the second chunk
THETA = 10000.0


def _inputs(seed=0):
  total = sum(CHUNKS)
  q, k, v = (np.asarray(jax.random.normal(key, (B, total, h, D))) for key, h in
             zip(jax.random.split(jax.random.key(seed), 3), (H, HKV, HKV)))
  valid = np.ones((B, total), bool)
  valid[1, :2] = False  # row 1 left-padded: its tokens are numbered from the third
  valid[0, 11:13] = False  # row 0's third chunk right-padded (a prompt's last chunk, before its decode steps)
  return q, k, v, valid


def _rope(x, position):
  """NumPy RoPE (rotate-half pairing) of x [..., D] at an integer position."""
  inv_freq = THETA ** (-np.arange(0, D, 2) / D)
  angles = np.concatenate([position * inv_freq] * 2)
  half = np.concatenate([-x[..., D // 2:], x[..., :D // 2]], axis=-1)
  return x * np.cos(angles) + half * np.sin(angles)


def _reference(q, k, v, valid):
  """out [B, T, H, D]: the chunk protocol as a loop over rows, queries and heads (zeros where not valid)."""
  out = np.zeros(q.shape)
  for b in range(B):
    seen = []  # indices into the row of the valid tokens so far
    start = 0
    for size in CHUNKS:
      kept = seen[:SINKS] + seen[SINKS:][-WINDOW:] if len(seen) > SLOTS else list(seen)
      chunk = [t for t in range(start, start + size) if valid[b, t]]
      for i, t in enumerate(chunk):
        keys = kept + chunk[:i + 1]  # at positions 0..len(keys)-1 in this order; the query is the last
        for h in range(H):
          g = h // (H // HKV)
          logits = np.array([_rope(q[b, t, h], len(keys) - 1) @ _rope(k[b, j, g], p) for p, j in enumerate(keys)])
          w = np.exp(logits / np.sqrt(D) - (logits / np.sqrt(D)).max())
          out[b, t, h] = (w / w.sum()) @ v[b, keys, g]
      seen += chunk
      start += size
  return out


def _rope_of(attend) -> dict:
  """A plain RoPE as each op takes it: one set of frequencies (the chunk op), or a function of the lengths."""
  if attend is sink_chunk_attention:
    return {"freqs": positional.frequencies(RopeConfig(), D)}
  return {"frequencies_at": lambda n: positional.frequencies_per_row(RopeConfig(), D, n)}


def _jit_chunk():
  """sink_chunk_attention jitted (one compile a chunk size instead of one a primitive: a quarter of the CPU)."""
  return jax.jit(sink_chunk_attention, static_argnames=("window", "sinks"))


def _jitted(attend):
  if attend is sink_chunk_attention:
    return _jit_chunk()
  return jax.jit(attend, static_argnames=("window", "sinks", "frequencies_at"))


def _by_chunks(attend, q, k, v, valid, window=WINDOW):
  state = ops.init_sink_cache(B, HKV, D, window=window, sinks=SINKS, dtype=jnp.float32)
  outs, states, start = [], [], 0
  rope = _rope_of(attend)
  attend = _jitted(attend)
  for size in CHUNKS:
    part = slice(start, start + size)
    out, state = attend(jnp.asarray(q[:, part]), jnp.asarray(k[:, part]), jnp.asarray(v[:, part]), state,
                        jnp.asarray(valid[:, part]), window=window, sinks=SINKS, **rope)
    outs.append(np.asarray(out))
    states.append(state)
    start += size
  return np.concatenate(outs, axis=1), states


def test_chunks_match_the_numpy_definition_and_leave_the_one_token_paths_state():
  q, k, v, valid = _inputs()
  chunked, chunked_states = _by_chunks(sink_chunk_attention, q, k, v, valid)
  np.testing.assert_allclose(np.where(valid[..., None, None], chunked, 0), _reference(q, k, v, valid), atol=2e-5)
  one_token, token_states = _by_chunks(ops.sink_cache_attention, q, k, v, valid)
  for got, want in zip(chunked_states, token_states):  # the same kept tokens, slots and lengths, bit for bit
    for a, b in zip(got, want):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  index = np.cumsum(valid, axis=1) - 1  # each token's index in its row
  same = valid & (index < SLOTS)  # no token before the query evicted: the two definitions agree
  np.testing.assert_allclose(chunked[same], one_token[same], atol=2e-6)
  differ = valid & (index >= SLOTS)
  gap = np.abs(chunked - one_token).max(axis=(2, 3))
  assert differ.sum() > 10 and np.all(gap[differ] > 1e-4)  # every later query sees more than the budget


def test_one_token_chunks_with_one_slot_less_are_the_one_token_path():
  """Chunks of one token see the kept tokens plus themselves: the one-token path with a window one larger."""
  q, k, v, valid = _inputs(seed=1)
  total = q.shape[1]
  state = ops.init_sink_cache(B, HKV, D, window=WINDOW - 1, sinks=SINKS, dtype=jnp.float32)
  outs, attend = [], _jit_chunk()
  for t in range(total):
    out, state = attend(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], state, valid[:, t:t + 1],
                        window=WINDOW - 1, sinks=SINKS, **_rope_of(sink_chunk_attention))
    outs.append(np.asarray(out))
  want, _ = ops.sink_cache_attention(q, k, v, ops.init_sink_cache(B, HKV, D, window=WINDOW, sinks=SINKS,
                                                                  dtype=jnp.float32), valid, window=WINDOW,
                                     sinks=SINKS, **_rope_of(ops.sink_cache_attention))
  np.testing.assert_allclose(np.concatenate(outs, 1)[valid], np.asarray(want)[valid], atol=2e-6)


def test_a_bfloat16_cache_reads_a_chunks_float32_keys_and_values_as_it_holds_them():
  """Float32 keys and values into a bfloat16 cache: the chunk's own are read rounded to bfloat16, as the one-token
  path reads them back from the cache (bit for bit the outputs of inputs rounded beforehand), in q's dtype."""
  q, k, v, valid = _inputs(seed=2)
  as_bf16 = lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))  # noqa: E731
  attend, runs = _jit_chunk(), []
  for keys, values in ((k, v), (as_bf16(k), as_bf16(v))):
    state = ops.init_sink_cache(B, HKV, D, window=WINDOW, sinks=SINKS, dtype=jnp.bfloat16)
    outs, start = [], 0
    for size in CHUNKS:
      part = slice(start, start + size)
      out, state = attend(q[:, part], keys[:, part], values[:, part], state, valid[:, part], window=WINDOW,
                          sinks=SINKS, **_rope_of(sink_chunk_attention))
      outs.append(np.asarray(out))
      start += size
    runs.append(np.concatenate(outs, axis=1))
  assert runs[0].dtype == np.float32 and state.key.dtype == jnp.bfloat16
  np.testing.assert_array_equal(runs[0], runs[1])
