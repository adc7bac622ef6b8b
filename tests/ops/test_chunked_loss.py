"""The chunked loss fused with the LM head: the plain loss's value and gradients, whatever the chunk."""

import dataclasses

import jax
import numpy as np
import pytest

from longjax.config import ConfigError, ModelConfig
from longjax.nn import Llama, init_params
from longjax.ops import chunked_cross_entropy, chunked_token_nll, cross_entropy
from longjax.train.step import loss_fn

BATCH, LENGTH, HIDDEN, VOCAB = 2, 12, 8, 19


def _inputs(seed=0, length=LENGTH):
  rng = np.random.default_rng(seed)
  hidden = rng.standard_normal((BATCH, length, HIDDEN)).astype(np.float32)
  kernel = rng.standard_normal((HIDDEN, VOCAB)).astype(np.float32)
  targets = rng.integers(0, VOCAB, (BATCH, length)).astype(np.int32)
  mask = (rng.random((BATCH, length)) < 0.7).astype(np.float32)
  return hidden, kernel, targets, mask


def _numpy_loss_and_grads(hidden, kernel, targets, mask):
  """The reference, a loop over tokens in float64: masked NLL sum and its gradients w.r.t. hidden and kernel."""
  total, d_hidden, d_kernel = 0.0, np.zeros(hidden.shape), np.zeros(kernel.shape)
  for b in range(hidden.shape[0]):
    for t in range(hidden.shape[1]):
      h = hidden[b, t].astype(np.float64)
      logits = h @ kernel
      probs = np.exp(logits - logits.max())
      probs /= probs.sum()
      total += mask[b, t] * -np.log(probs[targets[b, t]])
      d_logits = mask[b, t] * (probs - np.eye(kernel.shape[1])[targets[b, t]])
      d_hidden[b, t] = kernel @ d_logits
      d_kernel += np.outer(h, d_logits)
  return total, d_hidden, d_kernel


def _chunked(chunk):
  return jax.jit(jax.value_and_grad(lambda h, w, t, m: chunked_cross_entropy(h, w, t, m, chunk=chunk)[0],
                                    argnums=(0, 1)))


# chunk 1: one position a chunk; 50: one chunk. Positions go to ceil(T / chunk) strided chunks of ceil(T / n) rows:
# at T = 12 every chunk size fills them exactly, at T = 13 chunks 4, 5, 6, 7 and 12 pad the last rows (masked).
@pytest.mark.parametrize("length", [12, 13])
@pytest.mark.parametrize("chunk", [1, 4, 5, 6, 7, 12, 50])
def test_chunked_loss_and_gradients_match_the_numpy_reference(chunk, length):
  hidden, kernel, targets, mask = _inputs(length=length)
  expected, expected_hidden, expected_kernel = _numpy_loss_and_grads(hidden, kernel, targets, mask)
  total, (d_hidden, d_kernel) = _chunked(chunk)(hidden, kernel, targets, mask)
  np.testing.assert_allclose(total, expected, rtol=1e-5)
  np.testing.assert_allclose(d_hidden, expected_hidden, atol=1e-5)
  np.testing.assert_allclose(d_kernel, expected_kernel, atol=1e-5)
  assert float(chunked_cross_entropy(hidden, kernel, targets, mask, chunk=chunk)[1]) == mask.sum()


def test_chunked_equals_the_plain_loss_on_the_head_output():
  hidden, kernel, targets, mask = _inputs(1)
  plain = jax.jit(jax.value_and_grad(lambda h, w: cross_entropy(h @ w, targets, mask)[0], argnums=(0, 1)))
  (total, grads), (expected, expected_grads) = _chunked(5)(hidden, kernel, targets, mask), plain(hidden, kernel)
  np.testing.assert_allclose(total, expected, rtol=1e-6)
  for got, want in zip(grads, expected_grads):
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_an_all_masked_chunk_adds_nothing():
  hidden, kernel, targets, mask = _inputs(2)
  mask[:, ::2] = 0  # chunk 6 makes 2 chunks of strided positions: chunk 0 (the even ones) is all masked
  total, (d_hidden, _) = _chunked(6)(hidden, kernel, targets, mask)
  assert np.all(np.asarray(d_hidden)[:, ::2] == 0)
  np.testing.assert_allclose(total, _numpy_loss_and_grads(hidden, kernel, targets, mask)[0], rtol=1e-5)


def test_chunk_below_one_is_an_error():
  with pytest.raises(ValueError, match="chunk must be >= 1"):
    chunked_cross_entropy(*_inputs(), chunk=0)


def test_loss_chunk_is_validated():
  with pytest.raises(ConfigError, match=r"model\.loss_chunk=-1 is invalid"):
    ModelConfig(loss_chunk=-1).validate()


SMALL = ModelConfig(vocab_size=37, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, num_kv_heads=1)


def test_train_loss_with_loss_chunk_equals_the_plain_loss_with_tied_embeddings():
  """Through the model and the step's loss_fn, the head being the transposed embedding, a masked batch (the
  untied head: tests/train/test_remat.py)."""
  plain = dataclasses.replace(SMALL, tie_embeddings=True)
  params = init_params(plain, jax.random.key(0))
  rng = np.random.default_rng(3)
  tokens = rng.integers(0, SMALL.vocab_size, (2, 10)).astype(np.int32)
  batch = {"inputs": tokens, "targets": np.roll(tokens, -1, 1), "loss_mask": (rng.random((2, 10)) < 0.8) * 1.0,
           "positions": np.tile(np.arange(10, dtype=np.int32), (2, 1)), "segment_ids": np.ones((2, 10), np.int32)}

  def run(config):
    grad = jax.value_and_grad(lambda p: loss_fn(p, Llama(config), batch, True), has_aux=True)
    return jax.jit(grad)(params)

  (loss, (total, count)), grads = run(dataclasses.replace(plain, loss_chunk=3))
  (expected_loss, (expected_total, expected_count)), expected_grads = run(plain)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
  np.testing.assert_allclose(total, expected_total, rtol=1e-6)
  assert count == expected_count
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), grads, expected_grads)


@pytest.mark.parametrize("chunk", [1, 5, 7, 50])  # at T = 13, chunks 5 and 7 pad the last rows
def test_chunked_token_nll_is_each_positions_loss(chunk):
  hidden, kernel, targets, _ = _inputs(2, length=13)
  logits = hidden.astype(np.float64) @ kernel
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
  expected = -np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  got = chunked_token_nll(hidden, kernel, targets, chunk=chunk)
  assert got.shape == targets.shape and got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  with pytest.raises(ValueError, match="chunk must be >= 1"):
    chunked_token_nll(hidden, kernel, targets, chunk=0)
