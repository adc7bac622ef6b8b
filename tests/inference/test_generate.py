"""Generation: sampling rules, stop tokens, streaming types at constant memory, model-level streaming oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longjax.config import AttentionConfig, RopeConfig
from longjax.inference import generate, init_cache, pad_prompts, sample_logits
from test_decode import model_and_params, tokens_for


def test_sampling_rules():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  keys = jax.random.split(jax.random.key(0), 2000)

  def draw(**rule):
    return np.asarray(jax.vmap(lambda key: sample_logits(logits, key, temperature=1.0, **rule)[0])(keys))

  assert int(sample_logits(logits, keys[0])[0]) == 0  # temperature 0: greedy
  assert set(draw(top_k=2).tolist()) == {0, 1}
  assert set(draw(top_p=0.7).tolist()) == {0, 1}  # 0.5 < 0.7: the nucleus needs the second token, not the third
  assert set(draw(top_p=0.5).tolist()) == {0}
  counts = np.bincount(draw(), minlength=4) / len(keys)
  np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.04)


def test_pad_prompts():
  tokens, lengths = pad_prompts([[5, 6, 7], [8]], pad_id=0)
  np.testing.assert_array_equal(tokens, [[5, 6, 7], [8, 0, 0]])
  np.testing.assert_array_equal(lengths, [3, 1])
  tokens, lengths = pad_prompts([4, 5])
  np.testing.assert_array_equal(tokens, [[4, 5]])
  with pytest.raises(ValueError, match="at least one token"):
    pad_prompts([[1], []])


def test_stop_tokens_end_a_row_and_the_rest_is_padding():
  model, params = model_and_params(layers=1)
  prompts = [[5, 9, 11], [7, 7, 3, 21]]
  free = np.asarray(generate(model, params, prompts, 10))
  stop = int(free[0, 2])
  out = np.asarray(generate(model, params, prompts, 10, stop_tokens=[stop], pad_id=-1))
  for row, ref in zip(out, free):
    hits = np.flatnonzero(ref == stop)
    end = hits[0] + 1 if len(hits) else len(ref)
    np.testing.assert_array_equal(row[:end], ref[:end])
    assert (row[end:] == -1).all()


def test_sampled_generation_is_reproducible_and_top_k_1_is_greedy():
  model, params = model_and_params(layers=1)
  prompts = [[5, 9, 11]]
  a = generate(model, params, prompts, 8, temperature=0.9, top_p=0.9, seed=3)
  b = generate(model, params, prompts, 8, temperature=0.9, top_p=0.9, seed=3)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(generate(model, params, prompts, 8, temperature=1.5, top_k=1, seed=4),
                                generate(model, params, prompts, 8))


def test_sliding_model_streams_past_its_positions_at_constant_memory():
  """Before the first eviction the sink cache is the sliding model's own full forward pass; then it keeps
  C = sinks + window slots and runs past max_position_embeddings with finite logits."""
  attention = AttentionConfig.of("sliding", window=8, sinks=2)
  model, params = model_and_params(RopeConfig(), attention=attention)
  tokens = tokens_for(length=10)
  cache = init_cache(model.config, 2, 10_000)  # max_length does not size a sink cache
  apply = jax.jit(lambda x, c: model.apply({"params": params}, x, cache=c))
  logits, cache = apply(tokens, cache)
  np.testing.assert_allclose(logits, model.apply({"params": params}, tokens), atol=1e-5)
  sizes = {x.nbytes for x in jax.tree.leaves(cache)}
  step = tokens[:, -1:]
  for _ in range(40):  # 50 tokens, max_position_embeddings 16
    logits, cache = apply(step, cache)
    step = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  assert {x.nbytes for x in jax.tree.leaves(cache)} == sizes
  assert cache["layers"][0].key.shape[2] == 10
  assert np.isfinite(np.asarray(logits)).all()
  np.testing.assert_array_equal(np.asarray(cache["layers"][0].length), [50, 50])


def test_infini_model_streaming_equals_one_call():
  """Two layers: the second layer's memory is written from the first layer's streamed outputs."""
  attention = AttentionConfig.of("infini", segment_len=4)
  model, params = model_and_params(RopeConfig(), layers=2, attention=attention)
  params = jax.tree_util.tree_map_with_path(  # open the gates: memory and local attention both matter
      lambda path, x: jnp.linspace(-2.0, 2.0, x.size).reshape(x.shape) if path[-1].key == "gate" else x, params)
  tokens = tokens_for(length=18)
  whole = model.apply({"params": params}, tokens)
  cache = init_cache(model.config, 2, 18)
  apply = jax.jit(lambda x, c: model.apply({"params": params}, x, cache=c))
  outs = []
  for chunk in np.split(np.arange(18), [5, 6, 13]):
    logits, cache = apply(tokens[:, chunk[0]:chunk[-1] + 1], cache)
    outs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), whole, atol=1e-4)
