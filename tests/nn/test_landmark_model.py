"""The landmark attention type in the model: cached prefill and decoding equal the whole-sequence call when
retrieval covers every block, generation inserts landmarks as the packing does, and its config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longjax.config import AttentionConfig, ConfigError, ModelConfig
from longjax.data import insert_landmarks
from longjax.inference import generate, init_cache
from longjax.nn import Llama, init_params

BLOCK, LANDMARK = 3, 259  # three ordinary tokens and a landmark; the byte tokenizer's ids end at 258


def _model(topk=16, kernel_block=512):
  attention = AttentionConfig.of("landmark", block=BLOCK, topk=topk, id=LANDMARK, kernel_block=kernel_block)
  config = ModelConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                       num_kv_heads=2, attention=attention)
  config.validate()
  return Llama(config), init_params(config, jax.random.key(0))


def _ordinary(length, key=1):
  return np.asarray(jax.random.randint(jax.random.key(key), (length,), 3, 259))


def _tokens(length, key=1):
  return insert_landmarks(_ordinary(length, key), BLOCK, LANDMARK)


def test_cached_prefill_and_decode_equal_the_whole_sequence():
  model, params = _model(kernel_block=8)  # the whole-sequence call in its blockwise form
  tokens = jnp.asarray(np.stack([_tokens(20, 1), _tokens(20, 2)]))  # 26 slots with landmarks
  whole = jax.jit(model.apply)({"params": params}, tokens)
  cache = init_cache(model.config, 2, tokens.shape[1])
  apply = jax.jit(lambda tok, cache: model.apply({"params": params}, tok, cache=cache))
  logits, cache = apply(tokens[:, :11], cache)
  outs = [logits]
  for t in range(11, tokens.shape[1]):
    logits, cache = apply(tokens[:, t:t + 1], cache)
    outs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), whole, atol=1e-4, rtol=1e-4)


def test_generate_inserts_landmarks_like_packing():
  """Greedy generation equals a greedy loop over whole-sequence calls on the landmark-inserted stream."""
  model, params = _model()
  prompt = _ordinary(7)
  steps = 8
  out = np.asarray(generate(model, params, [prompt.tolist()], steps))[0]
  forward = jax.jit(lambda tok: model.apply({"params": params}, tok))
  ordinary = list(prompt)
  for _ in range(steps):
    stream = insert_landmarks(ordinary, BLOCK, LANDMARK)
    padded = np.pad(stream, (0, 24 - len(stream)))  # one compiled length: later tokens do not reach earlier logits
    logits = np.array(forward(jnp.asarray(padded[None])))[0, len(stream) - 1]
    logits[LANDMARK] = -np.inf
    ordinary.append(int(np.argmax(logits)))
  assert out.tolist() == ordinary[len(prompt):]
  assert LANDMARK not in out


@pytest.mark.parametrize("key,value,message", [
    ("id", None, "model.attention.landmark.id=None is invalid"),
    ("id", 260, "model.attention.landmark.id=260 is invalid: must be < model.vocab_size=260"),
    ("block", 0, "model.attention.landmark.block=0 is invalid"),
    ("topk", 0, "model.attention.landmark.topk=0 is invalid"),
])
def test_config_errors_name_the_key(key, value, message):
  landmark = {"id": LANDMARK} | {key: value}
  with pytest.raises(ConfigError, match=f"^{message}"):
    ModelConfig(vocab_size=260, attention=AttentionConfig.of("landmark", **landmark)).validate()


def test_init_from_a_smaller_vocabulary_grows_the_embedding_with_its_mean():
  """A landmark run adds a token to its source's vocabulary (train.init_from): the new row is the mean row."""
  from longjax.train.init import merge_into
  fresh = {"embed_tokens": {"embedding": np.zeros((5, 3), np.float32)}, "lm_head": np.zeros((3, 5), np.float32)}
  source = {"embed_tokens": {"embedding": np.arange(12.0).reshape(4, 3)}, "lm_head": np.arange(12.0).reshape(3, 4)}
  merged = merge_into(fresh, source, scan_layers=False, num_layers=1)
  np.testing.assert_array_equal(merged["embed_tokens"]["embedding"][:4], source["embed_tokens"]["embedding"])
  np.testing.assert_array_equal(merged["embed_tokens"]["embedding"][4], [4.5, 5.5, 6.5])
  np.testing.assert_array_equal(merged["lm_head"][:, 4], [1.5, 5.5, 9.5])
  with pytest.raises(ConfigError, match="lm_head has shape"):
    merge_into(fresh, {"lm_head": np.zeros((2, 4))}, scan_layers=False, num_layers=1)
