"""KV-cache compression ops against plain NumPy references of each paper's rule (H2O, SnapKV, KIVI)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longjax import ops
from longjax.ops.kv_compress import dequantize, max_pool, pack, quantize, unpack

BATCH, HEADS, KV_HEADS, DIM = 2, 4, 2, 8
GROUP = HEADS // KV_HEADS


def _inputs(length, seed=0):
  q, k, v = (np.asarray(jax.random.normal(key, (BATCH, length, h, DIM)), np.float32)
             for key, h in zip(jax.random.split(jax.random.key(seed), 3), (HEADS, KV_HEADS, KV_HEADS)))
  return q * 2.0, k, v  # sharper attention: the heavy hitters differ from position order


def _softmax_rows(logits):
  logits = logits - logits.max(axis=-1, keepdims=True)
  weights = np.exp(logits)
  return weights / weights.sum(axis=-1, keepdims=True)


def _reference(rule, q, k, v, chunks, budget, protect, kernel=1):
  """The rule simulated token set by token set in NumPy, per (row, kv head): each call's queries attend over the
  kept tokens plus the call's own (causal), then `budget` tokens are kept. -> (out [B, T, H, D], kept sets after
  each call, one list per call of {(b, h): sorted positions})."""
  out = np.zeros(q.shape, np.float64)
  kept = {(b, h): [] for b in range(BATCH) for h in range(KV_HEADS)}
  score = {(b, h): {} for b in range(BATCH) for h in range(KV_HEADS)}
  history, start = [], 0
  for size in chunks:
    stop = start + size
    snapshot = {}
    for b in range(BATCH):
      for h in range(KV_HEADS):
        candidates = sorted(kept[b, h] + list(range(start, stop)))
        keys, values = k[b, candidates, h], v[b, candidates, h]
        heads = range(h * GROUP, (h + 1) * GROUP)

        def attend(query_positions):
          probs = np.zeros((len(query_positions), GROUP, len(candidates)))
          for i, t in enumerate(query_positions):
            visible = np.asarray(candidates) <= t
            for g, head in enumerate(heads):
              logits = np.where(visible, keys @ q[b, t, head] / np.sqrt(DIM), -np.inf)
              probs[i, g] = _softmax_rows(logits)
          return probs

        probs = attend(range(start, stop))
        for i, t in enumerate(range(start, stop)):
          for g, head in enumerate(heads):
            out[b, t, head] = probs[i, g] @ values
        protected = [c >= stop - protect for c in candidates]
        if rule == "h2o":
          for j, c in enumerate(candidates):
            score[b, h][c] = score[b, h].get(c, 0.0) + probs[:, :, j].sum()
          priority = np.asarray([score[b, h][c] for c in candidates])
        else:  # snapkv: the last `protect` queries vote, window keys left out, max-pooled over neighbours
          vote = attend(range(max(0, stop - protect), stop)).sum(axis=(0, 1))
          vote = np.where(protected, 0.0, vote)
          half = kernel // 2
          priority = np.asarray([vote[max(0, j - half):j + half + 1].max() for j in range(len(candidates))])
        priority = np.where(protected, np.inf, priority)
        order = np.argsort(-priority, kind="stable")[:budget]
        kept[b, h] = sorted(candidates[j] for j in order)
        snapshot[b, h] = list(kept[b, h])
    history.append(snapshot)
    start = stop
  return out, history


def _run(rule, q, k, v, chunks, budget, protect, kernel=1):
  state = ops.init_evicting_cache(BATCH, HEADS, KV_HEADS, DIM, budget=budget, window=protect if rule == "snapkv"
                                  else 0, dtype=jnp.float32)
  step = jax.jit(lambda s, q, k, v, p: ops.evicting_attention(q, k, v, p, jnp.ones(p.shape, bool), s, rule=rule,
                                                              protect=protect, kernel=kernel))
  outs, history, start = [], [], 0
  for size in chunks:
    positions = jnp.broadcast_to(jnp.arange(start, start + size, dtype=jnp.int32), (BATCH, size))
    out, state = step(state, q[:, start:start + size], k[:, start:start + size], v[:, start:start + size], positions)
    assert state.key.shape[2] == budget  # the cache's size is the budget whatever has streamed through
    position = np.asarray(state.position)
    history.append({(b, h): sorted(int(p) for p in position[b, h] if p >= 0)
                    for b in range(BATCH) for h in range(KV_HEADS)})
    outs.append(np.asarray(out))
    start += size
  return np.concatenate(outs, axis=1), history, state


@pytest.mark.parametrize("rule,protect,kernel", [("h2o", 3, 1), ("snapkv", 3, 3)])
def test_kept_sets_and_outputs_equal_the_numpy_rule_at_every_step(rule, protect, kernel):
  q, k, v = _inputs(24)
  chunks = [10, 1, 1, 5, 1, 1, 1, 1, 1, 1, 1]  # a chunked prefill, then decode steps
  budget = 7
  out, history, state = _run(rule, q, k, v, chunks, budget, protect, kernel)
  ref_out, ref_history = _reference(rule, q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), chunks,
                                    budget, protect, kernel)
  assert history == ref_history
  np.testing.assert_allclose(out, ref_out, atol=2e-5)
  assert all(len(kept) == budget for kept in history[-1].values())
  np.testing.assert_array_equal(state.length, [24, 24])
  # the rule's point: kept sets differ from the newest `budget` tokens and between heads
  assert history[-1][0, 0] != list(range(24 - budget, 24))
  assert len({tuple(kept) for kept in history[-1].values()}) > 1


@pytest.mark.parametrize("rule", ["h2o", "snapkv"])
def test_a_budget_at_least_the_context_keeps_everything_and_is_full_attention(rule):
  q, k, v = _inputs(12)
  out, history, _ = _run(rule, q, k, v, [8, 1, 1, 1, 1], budget=12, protect=2, kernel=3)
  assert history[-1] == {(b, h): list(range(12)) for b in range(BATCH) for h in range(KV_HEADS)}
  logits = np.einsum("bthd,bshd->bhts", q, np.repeat(k, GROUP, axis=2)) / np.sqrt(DIM)
  logits = np.where(np.tril(np.ones((12, 12), bool)), logits, -np.inf)
  full = np.einsum("bhts,bshd->bthd", _softmax_rows(logits), np.repeat(v, GROUP, axis=2))
  np.testing.assert_allclose(out, full, atol=1e-5)


def test_max_pool_is_torch_max_pool1d_with_padding():
  vote = jnp.asarray([[0.1, 0.9, 0.2, 0.0, 0.3, 0.05, 0.7]])
  np.testing.assert_allclose(max_pool(vote, 3), [[0.9, 0.9, 0.9, 0.3, 0.3, 0.7, 0.7]])
  np.testing.assert_allclose(max_pool(vote, 1), vote)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantization_error_within_half_a_step(bits):
  x = np.asarray(jax.random.normal(jax.random.key(3), (3, 5, 32, 16)), np.float32) * 3
  for axis in (2, 3):  # keys per channel (over tokens), values per token (over channels)
    codes, scale, low = quantize(jnp.asarray(x), axis, bits)
    assert int(codes.max()) <= 2 ** bits - 1
    error = np.abs(np.asarray(dequantize(codes, scale, low)) - x)
    bound = np.broadcast_to(np.asarray(scale) / 2, x.shape)
    assert np.all(error <= bound * (1 + 1e-5) + 1e-6)
    assert error.max() > 0.1 * bound.max()  # not trivially exact
    # the NumPy rule: min-max over the axis, round to the nearest step
    low_np, high_np = x.min(axis=axis, keepdims=True), x.max(axis=axis, keepdims=True)
    codes_np = np.round((x - low_np) / ((high_np - low_np) / (2 ** bits - 1)))
    assert np.mean(np.asarray(codes) == codes_np) > 0.999  # float rounding may move a code that sits on .5
  codes = jnp.asarray(np.random.default_rng(0).integers(0, 2 ** bits, (4, 6)), jnp.uint8)
  assert pack(codes, bits).shape[-1] == 6 * bits // 8
  np.testing.assert_array_equal(unpack(pack(codes, bits), bits), codes)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_cache_keys_per_channel_values_per_token(bits):
  group, length = 4, 14
  q, k, v = _inputs(length, seed=5)
  state = ops.init_quant_cache(BATCH, KV_HEADS, DIM, max_length=16, bits=bits, group=group, dtype=jnp.float32)
  assert state.key_code.shape == (BATCH, KV_HEADS, 16, DIM * bits // 8)
  step = jax.jit(lambda s, q, k, v: ops.quantized_attention(q, k, v, jnp.ones(q.shape[:2], bool), s, bits=bits,
                                                             key_block=512))
  start, outs = 0, []
  for size in [6, 1, 1, 1, 3, 1, 1]:
    out, state = step(state, q[:, start:start + size], k[:, start:start + size], v[:, start:start + size])
    outs.append(np.asarray(out))
    start += size
  kt, vt = np.swapaxes(k, 1, 2), np.swapaxes(v, 1, 2)  # [B, Hkv, T, D]
  closed = length // group * group  # 12: three groups quantized, two keys open
  keys = np.asarray(dequantize(unpack(state.key_code, bits).reshape(BATCH, KV_HEADS, 4, group, DIM),
                               state.key_scale[:, :, :, None], state.key_min[:, :, :, None]))
  keys = keys.reshape(BATCH, KV_HEADS, 16, DIM)[:, :, :closed]
  groups = kt[:, :, :closed].reshape(BATCH, KV_HEADS, closed // group, group, DIM)
  step_k = (groups.max(axis=3, keepdims=True) - groups.min(axis=3, keepdims=True)) / (2 ** bits - 1)
  error = np.abs(keys - kt[:, :, :closed]).reshape(groups.shape)
  assert np.all(error <= step_k / 2 * (1 + 1e-5) + 1e-6)
  np.testing.assert_array_equal(np.asarray(state.key_open)[:, :, :length - closed], kt[:, :, closed:length])
  values = np.asarray(dequantize(unpack(state.value_code, bits), state.value_scale[..., None],
                                 state.value_min[..., None]))[:, :, :length]
  step_v = (vt.max(axis=3, keepdims=True) - vt.min(axis=3, keepdims=True)) / (2 ** bits - 1)
  assert np.all(np.abs(values - vt) <= step_v / 2 * (1 + 1e-5) + 1e-6)
  # attention over the dequantized cache: close to full attention, and closer at 8 bits
  logits = np.einsum("bthd,bshd->bhts", q, np.repeat(k, GROUP, axis=2)) / np.sqrt(DIM)
  logits = np.where(np.tril(np.ones((length, length), bool)), logits, -np.inf)
  full = np.einsum("bhts,bshd->bthd", _softmax_rows(logits), np.repeat(v, GROUP, axis=2))
  error = np.abs(np.concatenate(outs, axis=1) - full).max()
  assert 0 < error < (0.05 if bits == 8 else 0.5)
