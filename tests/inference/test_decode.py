"""Decoding with a cache gives what a full forward pass gives: every rope type, GQA, scanned or not, ragged batches.

The oracle is the model's own whole-sequence call. Logits at position t of a causal model depend only on
tokens <= t, so one call over the whole buffer with `seq_len = t + 1` (what dynamic methods read) is the
full forward pass over the prefix t + 1.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longjax import positional
from longjax.config import ROPE_TYPES, AttentionConfig, ModelConfig, RopeConfig
from longjax.inference import generate, init_cache, prefill
from longjax.nn import Llama, init_params
from longjax.nn.attention import full as full_attention

PRETRAINED = 16  # original_max_position_embeddings: prompts start below it, decoding crosses it
PROMPT, TOTAL = 10, 26
ROPES = {
    "default": RopeConfig(),
    "linear": RopeConfig(rope_type="linear", factor=2.0),
    "ntk": RopeConfig(rope_type="ntk", alpha=4.0),
    "dynamic": RopeConfig(rope_type="dynamic", factor=4.0, original_max_position_embeddings=PRETRAINED),
    "yarn": RopeConfig(rope_type="yarn", factor=4.0, original_max_position_embeddings=PRETRAINED),
    "dynamic_yarn": RopeConfig(rope_type="dynamic_yarn", original_max_position_embeddings=PRETRAINED),
    "llama3": RopeConfig(rope_type="llama3", factor=4.0, original_max_position_embeddings=PRETRAINED),
    "longrope": RopeConfig(rope_type="longrope", factor=4.0, original_max_position_embeddings=PRETRAINED,
                           short_factor=(1.0, 1.2, 1.5, 2.0), long_factor=(1.0, 2.0, 3.0, 4.0)),
}


def model_and_params(rope=RopeConfig(), *, layers=2, scan=False, attention=AttentionConfig(), seed=0):
  """A small GQA model (8 query heads over 2 key/value heads) with weights large enough that positions matter."""
  config = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_layers=layers, num_heads=8,
                       num_kv_heads=2, initializer_range=0.1, scan_layers=scan, rope=rope, attention=attention,
                       max_position_embeddings=PRETRAINED)
  return Llama(config), _params(dataclasses.replace(config, rope=RopeConfig()), seed)


@functools.lru_cache(maxsize=None)
def _params(config: ModelConfig, seed: int):
  """Parameters do not depend on the positional method: initialise (seconds of XLA compilation) once per shape."""
  return init_params(config, jax.random.key(seed))


def tokens_for(batch=2, length=TOTAL, seed=1):
  return jax.random.randint(jax.random.key(seed), (batch, length), 3, 64)


def full_forward_logits(model, params, tokens):
  """t -> logits at position t of a full forward pass over tokens[:, :t + 1] (one compiled call for every t)."""
  forward = jax.jit(lambda p, x, n: model.apply({"params": p}, x, seq_len=n))
  return lambda t: forward(params, tokens, t + 1)[:, t]


def decode_errors(model, params, tokens, prompt=PROMPT):
  """Max |decode - full forward| over the prompt's logits and each token decoded one at a time after it."""
  reference = full_forward_logits(model, params, tokens)
  cache = init_cache(model.config, tokens.shape[0], tokens.shape[1])
  apply = jax.jit(lambda p, x, c: model.apply({"params": p}, x, cache=c))
  logits, cache = apply(params, tokens[:, :prompt], cache)
  errors = [float(jnp.max(jnp.abs(logits[:, -1] - reference(prompt - 1))))]
  for t in range(prompt, tokens.shape[1]):
    logits, cache = apply(params, tokens[:, t:t + 1], cache)
    errors.append(float(jnp.max(jnp.abs(logits[:, 0] - reference(t)))))
  return np.asarray(errors)


def test_every_rope_type_is_tested():
  assert set(ROPES) == set(ROPE_TYPES)


@pytest.mark.parametrize("scan", [False, True], ids=["layers", "scanned"])
@pytest.mark.parametrize("rope_type", ROPE_TYPES)
def test_decode_matches_full_forward(rope_type, scan):
  """Static methods: two layers, exact. Dynamic methods: one layer, exact (keys cached before RoPE and turned
  with each step's frequencies). With more layers a dynamic method's deeper keys depend on the frequencies of
  the step that computed them, which a full pass recomputes and a cache does not (YaRN paper sec. 3.3)."""
  layers = 1 if positional.is_dynamic(ROPES[rope_type]) else 2
  model, params = model_and_params(ROPES[rope_type], layers=layers, scan=scan)
  np.testing.assert_array_less(decode_errors(model, params, tokens_for()), 1e-4)


def test_keys_cached_after_rope_break_dynamic_ntk(monkeypatch):
  """The oracle has teeth: caching rotated keys (transformers #25104) leaves them at the prompt's frequencies."""
  model, params = model_and_params(ROPES["dynamic"], layers=1)
  monkeypatch.setattr(full_attention.positional, "is_dynamic", lambda rope: False)
  errors = decode_errors(model, params, tokens_for())
  assert errors[:PRETRAINED - PROMPT + 1].max() < 1e-4  # frequencies do not move before the pre-trained length
  assert errors.max() > 1e-3


def test_ragged_batch_decodes_as_each_prompt_alone():
  model, params = model_and_params(ROPES["dynamic_yarn"], layers=2)
  rows = np.asarray(tokens_for(batch=3, length=14, seed=3))
  prompts = [rows[0, :3].tolist(), rows[1, :14].tolist(), rows[2, :9].tolist()]
  together, cache = generate(model, params, prompts, 12, return_cache=True)
  np.testing.assert_array_equal(np.asarray(cache["layers"][0].length), [3 + 11, 14 + 11, 9 + 11])
  for i, prompt in enumerate(prompts):
    alone = generate(model, params, [prompt], 12)
    np.testing.assert_array_equal(np.asarray(together[i]), np.asarray(alone[0]))
  # The prompt logits too, not only their argmax.
  tokens = np.zeros((3, 14), np.int32)
  for i, prompt in enumerate(prompts):
    tokens[i, :len(prompt)] = prompt
  lengths = np.asarray([len(p) for p in prompts])
  batched, _ = prefill(model, params, init_cache(model.config, 3, 32), tokens, lengths)
  for i, prompt in enumerate(prompts):
    single, _ = prefill(model, params, init_cache(model.config, 1, 32), np.asarray([prompt]), lengths[i:i + 1])
    np.testing.assert_allclose(batched[i], single[0], atol=1e-5)


@pytest.mark.parametrize("rope_type", ["default", "dynamic"])
def test_greedy_generate_is_the_argmax_of_full_forward_passes(rope_type):
  model, params = model_and_params(ROPES[rope_type], layers=1)
  prompt = np.asarray(tokens_for(batch=1, length=PROMPT, seed=5))
  out = np.asarray(generate(model, params, prompt, 12)[0])
  buffer = np.zeros((1, PROMPT + 12), np.int32)
  buffer[0, :PROMPT] = prompt[0]
  forward = jax.jit(lambda x, n: model.apply({"params": params}, x, seq_len=n))
  for t in range(PROMPT, PROMPT + 12):
    buffer[0, t] = int(jnp.argmax(forward(jnp.asarray(buffer), t)[0, t - 1]))
  assert out.tolist() == buffer[0, PROMPT:].tolist()


STREAMING = [AttentionConfig(), AttentionConfig.of("sliding", window=6, sinks=2),
             AttentionConfig.of("infini", segment_len=5)]


@pytest.mark.parametrize("attention", STREAMING, ids=["full", "sliding", "infini"])
def test_chunked_prefill_equals_one_shot(attention):
  model, params = model_and_params(ROPES["yarn"], attention=attention)
  tokens = np.asarray(tokens_for(length=23, seed=7))
  lengths = np.asarray([23, 17])
  results = [prefill(model, params, init_cache(model.config, 2, 32), tokens, lengths, chunk=chunk)
             for chunk in (64, 4, 7)]
  for logits, cache in results[1:]:
    np.testing.assert_allclose(logits, results[0][0], atol=1e-5)
    for got, want in zip(jax.tree.leaves(cache), jax.tree.leaves(results[0][1])):
      np.testing.assert_allclose(got, want, atol=1e-5)


def test_cache_shapes_scanned_and_not():
  model, _ = model_and_params(layers=3, scan=True)
  scanned = init_cache(model.config, 2, 40)
  assert scanned["layers"].key.shape == (3, 2, 2, 40, 8)  # [layers, B, Hkv, S, D]
  unscanned = init_cache(dataclasses.replace(model.config, scan_layers=False), 2, 40)
  assert len(unscanned["layers"]) == 3 and unscanned["layers"][0].key.shape == (2, 2, 40, 8)
