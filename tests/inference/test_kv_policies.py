"""KV-cache policies in the model's decode path: exact at a budget >= the context, within budget at every step,
bad budgets as one line (library and command line), and the KV-cache calculator asking each entry."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from longjax.config import AttentionConfig, ConfigError
from longjax.evaluate import kv_cache_bytes
from longjax.inference import generate, init_cache, kv_policies
from longjax.nn import scan_params
from test_decode import model_and_params, tokens_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOTAL, PROMPT = 20, 12


def _decode_logits(model, params, tokens, policy):
  """Logits of the prompt's last token, then of each token fed one at a time, under `policy`; and the caches."""
  cache = kv_policies.init_cache(model.config, tokens.shape[0], tokens.shape[1], None, policy)
  apply = jax.jit(lambda p, x, c: model.apply({"params": p}, x, cache=c))
  logits, cache = apply(params, tokens[:, :PROMPT], cache)
  out, caches = [np.asarray(logits[:, -1])], [cache]
  for t in range(PROMPT, tokens.shape[1]):
    logits, cache = apply(params, tokens[:, t:t + 1], cache)
    out.append(np.asarray(logits[:, 0]))
    caches.append(cache)
  return np.stack(out, 1), caches


POLICIES = [("streaming", {}), ("h2o", {}), ("snapkv", {"window": 4, "kernel": 3})]


@pytest.mark.parametrize("name,options", POLICIES)
def test_a_budget_at_least_the_context_is_the_full_cache(name, options):
  model, params = model_and_params(layers=2)
  tokens = tokens_for(2, TOTAL)
  full, _ = _decode_logits(model, params, tokens, None)
  compressed, _ = _decode_logits(model, params, tokens, kv_policies.make_policy(name, TOTAL, TOTAL, **options))
  np.testing.assert_allclose(compressed, full, atol=2e-5)
  assert np.array_equal(generate(model, params, tokens[:, :PROMPT], 8, kv_policy=name, kv_budget=PROMPT + 8,
                                 kv_options=options), generate(model, params, tokens[:, :PROMPT], 8))


@pytest.mark.parametrize("name,options", POLICIES)
def test_the_budget_holds_at_every_step(name, options):
  model, params = model_and_params(layers=2)
  budget = 6
  full, _ = _decode_logits(model, params, tokens_for(2, TOTAL), None)
  logits, caches = _decode_logits(model, params, tokens_for(2, TOTAL), kv_policies.make_policy(name, budget, TOTAL,
                                                                                                 **options))
  assert np.abs(logits - full).max() > 1e-3  # tokens were dropped: the logits moved
  for length, cache in zip(range(PROMPT, TOTAL + 1), caches):
    for layer in cache["layers"]:
      state = layer.state
      if name == "streaming":
        assert state.key.shape[2] == budget
        held = np.sum(np.asarray(state.token) >= 0, axis=1)  # [B]
      else:
        assert state.key.shape[2] == state.value.shape[2] == budget
        held = np.sum(np.asarray(state.position) >= 0, axis=2)  # [B, Hkv]
      assert np.all(held == min(length, budget)), (length, held)
      np.testing.assert_array_equal(layer.length, [length, length])


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_quantized_caches_decode_close_to_the_full_cache(name):
  model, params = model_and_params(layers=2)
  tokens = tokens_for(2, TOTAL)
  full, _ = _decode_logits(model, params, tokens, None)
  quantized, caches = _decode_logits(model, params, tokens, kv_policies.make_policy(name, None, TOTAL))
  error = np.abs(quantized - full).max()
  assert 0 < error < (0.02 if name == "int8" else 0.3) * np.abs(full).max()
  assert caches[-1]["layers"][0].state.key_code.dtype == np.uint8


def test_scanned_layers_carry_compressed_caches():
  model, params = model_and_params(layers=2)
  scanned = model_and_params(layers=2, scan=True)[0]
  scanned_params = scan_params(params, 2)
  tokens = tokens_for(1, TOTAL)
  policy = kv_policies.make_policy("h2o", 8, TOTAL)
  np.testing.assert_allclose(_decode_logits(scanned, scanned_params, tokens, policy)[0],
                             _decode_logits(model, params, tokens, policy)[0], atol=2e-5)


@pytest.mark.parametrize("name,budget,options,words", [
    ("h2o", 0, {}, "kv_budget=0 is invalid: kv_policy=h2o needs a whole number of tokens, at least 1"),
    ("snapkv", -4, {}, "kv_budget=-4 is invalid"),
    ("streaming", 64, {}, "at most the cache length 32"),
    ("streaming", 4, {}, "at least 5"),
    ("snapkv", 16, {"window": 16}, "at least 17"),
    ("snapkv", 16, {"kernel": 4}, "kv_options.kernel=4 is invalid"),
    ("h2o", None, {}, "kv_budget=None is invalid: kv_policy=h2o needs a budget"),
    ("int8", 16, {}, "kv_budget=16 is invalid: kv_policy=int8 keeps every token"),
    ("lru", 16, {}, "kv_policy='lru' is invalid: allowed full, streaming, h2o, snapkv, int8, int4"),
])
def test_bad_budgets_are_one_clear_line(name, budget, options, words):
  with pytest.raises(ConfigError) as error:
    kv_policies.make_policy(name, budget, 32, **options)
  assert words in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name,options", [("streaming", {}), ("h2o", {}), ("snapkv", {}), ("snapkv", {"window": 4})])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_a_bytes_budget_is_the_largest_token_budget_whose_cache_fits(name, options, dtype):
  config = model_and_params(layers=1)[0].config
  sizes = {b: kv_cache_bytes(config, b, dtype=dtype, kv_policy=kv_policies.make_policy(name, b, **options))
           for b in range(1, 200) if b > options.get("window", kv_policies.SNAPKV_WINDOW if name == "snapkv" else
                                                        kv_policies.STREAMING_SINKS if name == "streaming" else 0)}
  smallest = sizes[min(sizes)]
  for max_bytes in [smallest, smallest + 1, *range(smallest + 7, sizes[199], 997), sizes[199]]:
    expected = max(b for b, size in sizes.items() if size <= max_bytes)  # the loop: every budget tried
    assert kv_policies.budget_for_bytes(name, config, max_bytes, dtype, **options) == expected, max_bytes
  with pytest.raises(ConfigError, match=rf"^kv_budget_bytes={smallest - 1} is invalid: kv_policy={name} needs at "
                                        rf"least {smallest} bytes per sequence here \(its smallest budget, "
                                        rf"{min(sizes)} tokens, in {dtype}\)$"):
    kv_policies.budget_for_bytes(name, config, smallest - 1, dtype, **options)


@pytest.mark.parametrize("name,max_bytes,words", [
    ("int8", 10_000, "kv_budget_bytes is invalid for kv_policy=int8: it keeps every token"),
    ("full", 10_000, "kv_budget_bytes is invalid for kv_policy=full"),
    ("h2o", 0, "kv_budget_bytes=0 is invalid: a positive whole number of bytes per sequence"),
    ("h2o", 10.5, "kv_budget_bytes=10.5 is invalid"),
    ("lru", 10_000, "kv_policy='lru' is invalid: allowed full, streaming, h2o, snapkv, int8, int4"),
])
def test_bad_bytes_budgets_are_one_clear_line(name, max_bytes, words):
  config = model_and_params(layers=1)[0].config
  with pytest.raises(ConfigError) as error:
    kv_policies.budget_for_bytes(name, config, max_bytes)
  assert words in str(error.value) and "\n" not in str(error.value)
  with pytest.raises(ConfigError, match="give one of them, not both"):
    kv_policies.resolve_budget("h2o", 8, 10_000, config)
  assert kv_policies.resolve_budget("h2o", 8, None, config) == 8


def test_compression_needs_full_attention():
  model, _ = model_and_params(layers=1, attention=AttentionConfig.of("sliding", window=4))
  with pytest.raises(ConfigError, match="model.attention.type=full"):
    kv_policies.init_cache(model.config, 1, 16, None, kv_policies.make_policy("h2o", 8, 16))
  assert isinstance(init_cache(model.config, 1, 16), dict)


def test_the_command_line_reports_a_bad_budget_and_exits_2():
  result = subprocess.run([sys.executable, "-m", "longjax.generate", "--workdir", "/nonexistent", "--kv_policy", "h2o",
                           "--kv_budget", "0"], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO})
  assert result.returncode == 2, result.stderr[-2000:]
  assert "kv_budget=0 is invalid" in result.stderr and "Traceback" not in result.stderr


def test_the_calculator_asks_each_entry():
  model, _ = model_and_params(layers=1)
  config = model.config  # 2 kv heads, head_dim 8: 64 bytes of float16 K/V per token and layer
  assert kv_cache_bytes(config, 100, kv_policy=kv_policies.make_policy("full")) == kv_cache_bytes(config, 100)
  sliding = model_and_params(layers=1, attention=AttentionConfig.of("sliding", window=60, sinks=4))[0].config
  assert kv_cache_bytes(config, 100, kv_policy=kv_policies.make_policy("streaming", 64)) == kv_cache_bytes(sliding, 100)
  assert kv_cache_bytes(config, 100, kv_policy=kv_policies.make_policy("h2o", 64)) == 64 * (64 + 2 * 8)
  assert kv_cache_bytes(config, 10, kv_policy=kv_policies.make_policy("h2o", 64)) == 10 * (64 + 2 * 8)
  window = 32 * (8 * 8 * 2 + 4)  # SnapKV's observation window: 32 queries of 8 heads, and their positions
  assert kv_cache_bytes(config, 100, kv_policy=kv_policies.make_policy("snapkv", 64)) == 64 * (64 + 2 * 4) + window
  # int8: 100 tokens = 3 closed groups of 32 (codes, per-channel scale and minimum) + 4 open float16 keys;
  # values: codes plus a per-token scale and minimum
  keys = 96 * 16 + 3 * 2 * 16 * 4 + 4 * 16 * 2
  values = 100 * (16 + 2 * 2 * 4)
  assert kv_cache_bytes(config, 100, kv_policy=kv_policies.make_policy("int8")) == keys + values
  int4 = kv_cache_bytes(config, 100, kv_policy=kv_policies.make_policy("int4"))
  assert int4 == keys - 96 * 8 + values - 100 * 8
