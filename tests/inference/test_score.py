"""The evaluation forward: chunked per-token losses (`inference.token_nll`) and `LoadedModel.logits`, both compiled."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longjax.config import ModelConfig, RopeConfig
from longjax.inference import token_nll
from longjax.inference.loaded import LoadedModel, _logits, length_bucket
from longjax.nn import Llama, init_params

CONFIG = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     rope=RopeConfig(rope_type="dynamic", factor=2.0, original_max_position_embeddings=32))


def _tokens(batch, length, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, CONFIG.vocab_size, (batch, length), dtype=np.int32))


def _direct_nll(config, params, inputs, targets):
  logits = Llama(config).apply({"params": params}, inputs)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("loss_chunk", [0, 7], ids=["default_chunk", "chunk_7_unaligned"])
@pytest.mark.parametrize("tied", [False, True])
def test_token_nll_equals_the_full_logits(loss_chunk, tied):
  config = dataclasses.replace(CONFIG, loss_chunk=loss_chunk, tie_embeddings=tied)
  params = init_params(config, jax.random.key(0))
  tokens = _tokens(2, 51)
  got = token_nll(Llama(config), params, tokens[:, :-1], tokens[:, 1:])
  np.testing.assert_allclose(got, _direct_nll(config, params, tokens[:, :-1], tokens[:, 1:]), atol=2e-5)


def test_token_nll_never_holds_the_whole_logits():
  """XLA's compiled memory: 1 x 2048 tokens x vocabulary 32768 would be 256 MiB of float32 logits; the scratch holds
  one chunk's 32 MiB (a few times over) and the layers' own (40 MiB of attention logits at this length)."""
  config = dataclasses.replace(CONFIG, vocab_size=32768, loss_chunk=256)
  params = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
  tokens = jax.ShapeDtypeStruct((1, 2048), jnp.int32)
  compiled = jax.jit(lambda p, t: token_nll(Llama(config), p, t, t)).lower(params, tokens).compile()
  assert compiled.memory_analysis().temp_size_in_bytes < 160 * 2**20


def test_length_buckets():
  assert [length_bucket(n) for n in (1, 64, 65, 77, 128, 129, 300, 8192, 8193)] == [1, 64, 72, 80, 128, 144, 320,
                                                                                    8192, 9216]
  for n in range(1, 5000, 7):
    assert n <= length_bucket(n) <= 1.125 * n


def test_loaded_logits_pad_to_a_bucket_and_keep_the_real_length():
  """Logits of a padded, compiled forward equal the op-by-op forward at the real length (a dynamic method, whose
  frequencies read the length), and two lengths of one bucket share one compiled forward."""
  params = init_params(CONFIG, jax.random.key(1))
  loaded = LoadedModel(config=None, params=params, model=Llama(CONFIG), tokenizer=None, step=0)
  tokens = _tokens(2, 77, seed=1)  # past the original 32 positions: dynamic NTK's base depends on the length
  expected = Llama(CONFIG).apply({"params": params}, tokens)
  np.testing.assert_allclose(loaded.logits(tokens), expected, atol=2e-5)
  positions = jnp.broadcast_to(jnp.arange(77, dtype=jnp.int32) + 5, (2, 77))
  np.testing.assert_allclose(loaded.logits(tokens, positions),
                             Llama(CONFIG).apply({"params": params}, tokens, positions), atol=2e-5)
  compiled = _logits._cache_size()
  loaded.logits(tokens[:, :74])
  assert _logits._cache_size() == compiled  # 74 and 77 tokens: both padded to 80
