"""KV-cache compression ops, exactly: KIVI's quantized cache against a NumPy loop of what each query reads (keys
of closed groups quantized per channel when their group filled, open and new keys exact, every value quantized per
token); rows right-padded to chunk sizes of their own (as `generate` pads prompts) against the NumPy rules, padding
neither read nor kept; the empty states, the 4-bit layout, constant groups, queries that see nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longjax import ops
from longjax.ops.kv_compress import candidate_attention, max_pool, pack, quantize, unpack

B, H, HKV, D = 2, 4, 2, 8
G = H // HKV


def _inputs(length, seed):
  q, k, v = (np.asarray(jax.random.normal(key, (B, length, h, D)), np.float32)
             for key, h in zip(jax.random.split(jax.random.key(seed), 3), (H, HKV, HKV)))
  return q * 2.0, k, v


def _quant_np(x, bits):
  """NumPy min-max quantization of x [n, ...] over axis 0, in float32 as the op -> dequantized x."""
  low, high = x.min(axis=0, keepdims=True), x.max(axis=0, keepdims=True)
  scale = (high - low) / np.float32(2 ** bits - 1)
  codes = np.clip(np.round((x - low) / np.where(scale > 0, scale, 1)), 0, 2 ** bits - 1)
  return (codes * scale + low).astype(np.float32)


# Two rows read in calls of T = 5 tokens, each row right-padded to its own chunk sizes (0: a call with only padding),
# as `generate` pads a batch of prompts of different lengths: 13 tokens a row.
CHUNKS = ([5, 1, 3, 1, 3, 0], [2, 4, 0, 3, 1, 3])
T = 5


def _calls(chunks=CHUNKS):
  """Per call: (token index int[B, T] into each row, valid bool[B, T]) of the rows' chunks, right-padded."""
  calls, starts = [], [0] * B
  for sizes in zip(*chunks):
    index, valid = np.zeros((B, T), np.int32), np.zeros((B, T), bool)
    for b, size in enumerate(sizes):
      index[b, :size], valid[b, :size] = np.arange(starts[b], starts[b] + size), True
      starts[b] += size
    calls.append((index, valid))
  return calls


def _gather(x, index):
  return np.stack([x[b, index[b]] for b in range(B)])


def _as_bf16(x):
  return np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))


def _quant_reference(q, k, v, bits, group, cast=lambda x: x):
  """out [B, L, H, D] of KIVI's cache read chunk by chunk, as a loop over rows, kv heads and queries; `cast` rounds
  what the cache holds (keys, dequantized keys and values) to its dtype."""
  out = np.zeros(q.shape)
  for b in range(B):
    for h in range(HKV):
      start = 0
      for size in CHUNKS[b]:
        stop = start + size
        closed = start // group * group  # groups full before this call are quantized
        keys = np.array(cast(k[b, :stop, h]))
        for g0 in range(0, closed, group):
          keys[g0:g0 + group] = cast(_quant_np(cast(k[b, g0:g0 + group, h]), bits))
        values = np.stack([cast(_quant_np(v[b, t, h][:, None], bits)[:, 0]) for t in range(stop)]) if stop else None
        for t in range(start, stop):
          for head in range(h * G, (h + 1) * G):
            logits = keys[:t + 1].astype(np.float64) @ q[b, t, head] / np.sqrt(D)
            w = np.exp(logits - logits.max())
            out[b, t, head] = cast(w) @ values[:t + 1] / w.sum()  # weights in the cache dtype, sum not
        start = stop
  return out


@pytest.mark.parametrize("bits,dtype", [(8, jnp.float32), (4, jnp.float32), (8, jnp.bfloat16)])
def test_quantized_attention_reads_what_kivi_stores(bits, dtype):
  """Groups of 3 closed inside a call, across calls and exactly at a call's end; padding neither read nor kept; a
  group not yet full has no codes, scale or minimum. A bfloat16 cache read by float32 queries: every key and
  value the queries read is rounded to bfloat16 (new and open keys as stored, closed groups and values after
  dequantizing), as a bfloat16 full cache would hold them."""
  q, k, v = _inputs(13, seed=7)
  cast = _as_bf16 if dtype == jnp.bfloat16 else (lambda x: x)
  state = ops.init_quant_cache(B, HKV, D, max_length=16, bits=bits, group=3, dtype=dtype)
  step = jax.jit(lambda s, q, k, v, m: ops.quantized_attention(q, k, v, m, s, bits=bits, key_block=4))
  out = np.zeros(q.shape, np.float32)
  for index, valid in _calls():
    got, state = step(state, _gather(q, index), _gather(k, index), _gather(v, index), valid)
    got = np.asarray(got)
    for b in range(B):
      out[b, index[b][valid[b]]] = got[b][valid[b]]
      closed = int(state.length[b]) // 3
      assert not np.any(np.asarray(state.key_scale[b, :, closed:])) and not np.any(state.key_min[b, :, closed:])
      assert not np.any(unpack(state.key_code, bits)[b, :, 3 * closed:])
    assert state.key_open.dtype == dtype and got.dtype == np.float32
  np.testing.assert_allclose(out, _quant_reference(q, k, v, bits, 3, cast), atol=3e-5)
  np.testing.assert_array_equal(state.length, [13, 13])
  # the open group (token 12) is kept exactly, in its group's first slot
  np.testing.assert_array_equal(np.asarray(state.key_open, np.float32)[:, :, 0], cast(k[:, 12]))


@pytest.mark.parametrize("rule,protect,kernel", [("h2o", 2, 1), ("snapkv", 2, 3)])
def test_evicting_rows_of_their_own_chunk_sizes_follow_the_numpy_rule(rule, protect, kernel):
  """Right-padded rows: each row's outputs and kept sets are the NumPy rule's for that row's chunks alone."""
  from test_kv_compress import _reference  # the rule in NumPy, one chunk list for every row

  budget = 5
  q, k, v = _inputs(13, seed=4)
  state = ops.init_evicting_cache(B, H, HKV, D, budget=budget, window=protect if rule == "snapkv" else 0,
                                  dtype=jnp.float32)
  step = jax.jit(lambda s, q, k, v, p, m: ops.evicting_attention(q, k, v, p, m, s, rule=rule, protect=protect,
                                                                  kernel=kernel))
  out, kept = np.zeros(q.shape, np.float32), []
  for index, valid in _calls():
    got, state = step(state, _gather(q, index), _gather(k, index), _gather(v, index), jnp.asarray(index), valid)
    got = np.asarray(got)
    assert not np.any(got[~valid])  # padded queries read nothing
    for b in range(B):
      out[b, index[b][valid[b]]] = got[b][valid[b]]
    position = np.asarray(state.position)
    kept.append([[sorted(int(p) for p in position[b, h] if p >= 0) for h in range(HKV)] for b in range(B)])
  np.testing.assert_array_equal(state.length, [13, 13])
  for b in range(B):
    rows = [np.repeat(x[b:b + 1].astype(np.float64), B, axis=0) for x in (q, k, v)]
    ref_out, ref_kept = _reference(rule, *rows, CHUNKS[b], budget, protect, kernel)
    np.testing.assert_allclose(out[b], ref_out[0], atol=2e-5)
    assert [row[b] for row in kept] == [[call[0, h] for h in range(HKV)] for call in ref_kept]


def test_empty_states_shapes_dtypes_and_values():
  evicting = ops.init_evicting_cache(3, H, HKV, D, budget=5, window=2, dtype=jnp.bfloat16)
  expected = [((3, HKV, 5, D), jnp.bfloat16, 0), ((3, HKV, 5, D), jnp.bfloat16, 0), ((3, HKV, 5), jnp.int32, -1),
              ((3, HKV, 5), jnp.float32, 0), ((3, 2, H, D), jnp.bfloat16, 0), ((3, 2), jnp.int32, -1),
              ((3,), jnp.int32, 0)]
  for field, (shape, dtype, value) in zip(evicting, expected):
    assert field.shape == shape and field.dtype == dtype and np.all(np.asarray(field, np.float32) == value)
  quant = ops.init_quant_cache(3, HKV, D, max_length=10, bits=4, group=4, dtype=jnp.bfloat16)  # 12 slots
  expected = [((3, HKV, 12, D // 2), jnp.uint8), ((3, HKV, 3, D), jnp.float32), ((3, HKV, 3, D), jnp.float32),
              ((3, HKV, 4, D), jnp.bfloat16), ((3, HKV, 12, D // 2), jnp.uint8), ((3, HKV, 12), jnp.float32),
              ((3, HKV, 12), jnp.float32), ((3,), jnp.int32)]
  for field, (shape, dtype) in zip(quant, expected):
    assert field.shape == shape and field.dtype == dtype and not np.any(np.asarray(field, np.float32))
  assert ops.init_quant_cache(1, 1, D, max_length=8, bits=8, group=4, dtype=jnp.float32).key_code.shape == (1, 1, 8, D)
  h2o = ops.init_evicting_cache(1, H, HKV, D, budget=3, dtype=jnp.float32)  # no observation window by default
  assert h2o.obs_query.shape == (1, 0, H, D) and h2o.obs_position.shape == (1, 0)


@pytest.mark.parametrize("kernel", [1, 3, 5, 7])
def test_max_pool_is_a_loop_over_neighbours(kernel):
  """torch's max_pool1d(kernel, stride 1, padding kernel // 2) as a loop: max over j - k // 2 .. j + k // 2."""
  vote = np.random.default_rng(kernel).random((2, 3, 9)).astype(np.float32)
  half = kernel // 2
  want = np.stack([vote[..., max(0, j - half):j + half + 1].max(-1) for j in range(9)], axis=-1)
  np.testing.assert_array_equal(max_pool(jnp.asarray(vote), kernel), want)


def test_four_bit_codes_pack_low_nibble_first():
  codes = jnp.asarray([[1, 2, 15, 0, 7, 9]], jnp.uint8)
  np.testing.assert_array_equal(pack(codes, 4), [[1 + 2 * 16, 15, 7 + 9 * 16]])
  np.testing.assert_array_equal(unpack(jnp.asarray([[0x21, 0x0F]], jnp.uint8), 4), [[1, 2, 15, 0]])
  np.testing.assert_array_equal(pack(codes, 8), codes)


def test_a_constant_group_quantizes_exactly():
  x = jnp.full((2, 4, 3), -1.5)
  codes, scale, low = quantize(x, 1, 4)
  assert not np.any(np.asarray(codes)) and not np.any(np.asarray(scale))
  np.testing.assert_array_equal(low, np.full((2, 1, 3), -1.5))
  assert codes.dtype == jnp.uint8 and scale.shape == (2, 1, 3)


def test_a_padded_query_and_a_query_that_sees_no_key_read_nothing():
  q, k, v = _inputs(3, seed=2)
  keys, values = np.swapaxes(k, 1, 2), np.swapaxes(v, 1, 2)
  key_position = np.broadcast_to(np.asarray([1, 2, -1], np.int32), (B, HKV, 3))
  out, probs = jax.jit(candidate_attention)(jnp.asarray(q), jnp.asarray(keys), jnp.asarray(values), jnp.asarray(key_position),
                                   jnp.asarray(np.tile([0, 1, 2], (B, 1)), jnp.int32),
                                   jnp.asarray([[True, True, True], [True, False, True]]))
  out, probs = np.asarray(out), np.asarray(probs)
  assert not np.any(out[:, 0]) and not np.any(probs[:, :, :, 0])  # position 0 sees no key (the first is at 1)
  assert not np.any(out[1, 1]) and not np.any(probs[1, :, :, 1])  # not valid
  np.testing.assert_allclose(probs[0, :, :, 1], np.eye(3)[np.zeros((HKV, G), int)], atol=1e-6)  # key 1 alone
  np.testing.assert_allclose(probs[:, :, :, 2].sum(-1), 1.0, rtol=1e-6)
  assert not np.any(probs[..., 2])  # the empty slot


def _attention_np(q, keys, values, key_position, q_position):
  """Causal softmax attention by position in float64, each row's max subtracted (GQA: head h reads kv head h // G)."""
  out = np.zeros(q.shape[:3] + values.shape[-1:])
  for b, t, h in np.ndindex(*q.shape[:3]):
    kv = h // G
    seen = (key_position[b, kv] >= 0) & (key_position[b, kv] <= q_position[b, t])
    logits = keys[b, kv].astype(np.float64) @ q[b, t, h].astype(np.float64) / np.sqrt(q.shape[-1])
    weights = np.where(seen, np.exp(np.where(seen, logits, -np.inf) - logits[seen].max()), 0.0)
    out[b, t, h] = weights / weights.sum() @ values[b, kv]
  return out


def test_candidate_attention_is_stable_for_large_logits_and_rows_far_apart():
  # logits of several hundred (exp overflows float32 past 88) and one query row 500 above the others: a softmax
  # that skips the row's max, or takes one max over all rows, gives inf/nan or a row of zeros
  q, k, v = _inputs(4, seed=5)
  q = q * np.asarray([40.0, 40.0, 40.0, 400.0], np.float32)[None, :, None, None]
  keys, values = np.swapaxes(k, 1, 2), np.swapaxes(v, 1, 2)
  key_position = np.broadcast_to(np.arange(4, dtype=np.int32), (B, HKV, 4))
  q_position = np.tile(np.arange(4, dtype=np.int32), (B, 1))
  out, probs = jax.jit(candidate_attention)(jnp.asarray(q), jnp.asarray(keys), jnp.asarray(values),
                                            jnp.asarray(key_position), jnp.asarray(q_position),
                                            jnp.ones((B, 4), bool))
  assert np.all(np.isfinite(probs)) and np.all(np.isfinite(out))
  np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(out, _attention_np(q, keys, values, key_position, q_position), atol=1e-4)


def test_candidate_attention_accumulates_bfloat16_in_float32_and_returns_bfloat16():
  q, k, v = _inputs(6, seed=6)
  as_bf16 = lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))  # noqa: E731
  q, k, v = as_bf16(q * 3.0), as_bf16(k), as_bf16(v)
  keys, values = np.swapaxes(k, 1, 2), np.swapaxes(v, 1, 2)
  key_position = np.broadcast_to(np.arange(6, dtype=np.int32), (B, HKV, 6))
  q_position = np.tile(np.arange(6, dtype=np.int32), (B, 1))
  out, probs = jax.jit(candidate_attention)(*(jnp.asarray(x, jnp.bfloat16) for x in (q, keys, values)),
                                            jnp.asarray(key_position), jnp.asarray(q_position),
                                            jnp.ones((B, 6), bool))
  assert out.dtype == jnp.bfloat16 and probs.dtype == jnp.float32
  reference = _attention_np(q, keys, values, key_position, q_position)
  # one bfloat16 rounding of the output (2^-8 relative); logits rounded to bfloat16 (8 bits) before the softmax
  # would move the probabilities by ~|logit| * 2^-8 and miss this
  np.testing.assert_allclose(np.asarray(out, np.float32), reference, rtol=2 ** -8, atol=2 ** -8)


@pytest.mark.parametrize("rule", ["h2o", "snapkv"])
def test_an_evicting_bfloat16_cache_holds_float32_inputs_as_bfloat16(rule):
  """Float32 keys, values and queries into a bfloat16 cache: the chunk's own keys and values are read as the cache
  holds them (the same outputs as inputs rounded beforehand, bit for bit), and every field keeps its dtype (SnapKV's
  observation queries included), so the state can be carried through a jitted loop."""
  q, k, v = _inputs(9, seed=8)
  step = jax.jit(lambda s, q, k, v, p: ops.evicting_attention(q, k, v, p, jnp.ones(p.shape, bool), s, rule=rule,
                                                              protect=2, kernel=3))
  runs = []
  for keys, values in ((k, v), (_as_bf16(k), _as_bf16(v))):
    state = ops.init_evicting_cache(B, H, HKV, D, budget=4, window=2 if rule == "snapkv" else 0, dtype=jnp.bfloat16)
    outs = []
    for start, stop in ((0, 6), (6, 7), (7, 9)):
      positions = jnp.broadcast_to(jnp.arange(start, stop, dtype=jnp.int32), (B, stop - start))
      out, state = step(state, q[:, start:stop], keys[:, start:stop], values[:, start:stop], positions)
      outs.append(np.asarray(out))
    runs.append((np.concatenate(outs, axis=1), state))
  (out, state), (rounded_out, rounded_state) = runs
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, rounded_out)
  empty = ops.init_evicting_cache(B, H, HKV, D, budget=4, window=2, dtype=jnp.bfloat16)
  for got, want, like in zip(state, rounded_state, empty):
    assert got.dtype == like.dtype
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_snapkv_pools_over_one_token_by_default_and_an_unknown_rule_is_named():
  """Without `kernel` SnapKV's vote is not pooled (kernel 1, the NumPy rule's own default)."""
  from test_kv_compress import _reference

  q, k, v = _inputs(8, seed=9)
  state = ops.init_evicting_cache(B, H, HKV, D, budget=3, window=2, dtype=jnp.float32)
  positions = jnp.broadcast_to(jnp.arange(8, dtype=jnp.int32), (B, 8))
  out, state = jax.jit(lambda s: ops.evicting_attention(q, k, v, positions, jnp.ones((B, 8), bool), s, rule="snapkv",
                                                        protect=2))(state)
  ref_out, ref_kept = _reference("snapkv", *(x.astype(np.float64) for x in (q, k, v)), [8], 3, 2)
  np.testing.assert_allclose(out, ref_out, atol=2e-5)
  assert {(b, h): sorted(np.asarray(state.position)[b, h].tolist()) for b in range(B) for h in range(HKV)} == \
      ref_kept[0]
  with pytest.raises(ValueError, match=r"evicting_attention: unknown rule 'lru'; allowed: h2o, snapkv"):
    ops.evicting_attention(q, k, v, positions, jnp.ones((B, 8), bool), state, rule="lru", protect=2)
