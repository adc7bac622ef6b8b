"""The sliding-window perplexity protocol: every token after the first is scored exactly once."""

import dataclasses

import jax
import numpy as np
import pytest

from longjax.config import ModelConfig
from longjax.evaluate import loss_by_position, perplexity_at_length, windows
from longjax.nn import Llama, init_params

CONFIG = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=2)


@pytest.mark.parametrize("num_tokens, window, stride", [(100, 17, 5), (100, 17, 16), (64, 64, 8), (300, 33, 32)])
def test_windows_score_each_target_once_with_full_context(num_tokens, window, stride):
  """perplexity_at_length reads windows of max_len + 1 tokens with a stride of at most max_len."""
  scored = []
  for begin, first_new in windows(num_tokens, window, stride):
    assert 0 <= begin and begin + window <= num_tokens
    scored.extend(range(max(first_new, begin + 1), begin + window))
  assert sorted(scored) == list(range(1, num_tokens))


@pytest.mark.parametrize("stride", [4, 16, 64])  # 64 > every length: clamped, no token is skipped
def test_every_token_is_scored_once_at_every_length(stride):
  params = init_params(CONFIG, jax.random.key(0))
  rng = np.random.default_rng(0)
  documents = [rng.integers(0, CONFIG.vocab_size, n).astype(np.int32) for n in (40, 57, 90)]
  for length in (8, 16, 32):
    result = perplexity_at_length(Llama(CONFIG), params, documents, length, stride, batch_size=3)
    assert result.stride == min(stride, length)
    assert result.documents == 3 and result.tokens == sum(len(d) - 1 for d in documents)
    assert 1.0 < result.perplexity < 2 * CONFIG.vocab_size


def test_loss_equals_a_direct_computation_when_one_window_covers_the_document():
  params = init_params(CONFIG, jax.random.key(0))
  document = np.random.default_rng(1).integers(0, CONFIG.vocab_size, 33).astype(np.int32)
  result = perplexity_at_length(Llama(CONFIG), params, [document], 32, 8)
  logits = Llama(CONFIG).apply({"params": params}, document[None, :-1])
  logp = jax.nn.log_softmax(logits[0])
  expected = -np.mean(np.asarray(logp)[np.arange(32), document[1:]])
  np.testing.assert_allclose(result.loss, expected, rtol=1e-5)


def test_a_uniform_model_has_the_vocabulary_size_as_perplexity():
  params = jax.tree.map(np.zeros_like, init_params(CONFIG, jax.random.key(0)))
  documents = [np.random.default_rng(2).integers(0, CONFIG.vocab_size, n).astype(np.int32) for n in (40, 70)]
  result = perplexity_at_length(Llama(CONFIG), params, documents, 16, 8)
  np.testing.assert_allclose(result.perplexity, CONFIG.vocab_size, rtol=1e-6)
  assert result.tokens == 39 + 69


def test_loss_with_a_stride_equals_a_hand_computation():
  """40 tokens, windows of 16 + 1 moved by 8: begins 0, 8, 16 and 23 (aligned to the end); new targets
  1-16, 17-24, 25-32 and 33-39, each scored with the context its window gives it."""
  params = init_params(CONFIG, jax.random.key(3))
  document = np.random.default_rng(4).integers(0, CONFIG.vocab_size, 40).astype(np.int32)
  nll = []
  for begin, first, last in [(0, 1, 16), (8, 17, 24), (16, 25, 32), (23, 33, 39)]:
    window = document[begin:begin + 17]
    logp = np.asarray(jax.nn.log_softmax(Llama(CONFIG).apply({"params": params}, window[None, :-1])[0]))
    nll += [-logp[t - begin - 1, document[t]] for t in range(first, last + 1)]
  result = perplexity_at_length(Llama(CONFIG), params, [document], 16, 8)
  assert result.tokens == len(nll) == 39
  np.testing.assert_allclose(result.loss, np.mean(nll), rtol=1e-5)


@pytest.mark.parametrize("loss_chunk", [6, 16])  # 16 positions: 6 -> 3 chunks of 6, 2 padded; 16: one chunk
def test_chunked_head_gives_the_same_perplexity_and_position_losses(loss_chunk):
  """model.loss_chunk: evaluation runs the LM head chunk by chunk (no [B, T, vocab] logits), same numbers."""
  chunked = dataclasses.replace(CONFIG, loss_chunk=loss_chunk)
  params = init_params(CONFIG, jax.random.key(5))
  documents = [np.random.default_rng(6).integers(0, CONFIG.vocab_size, n).astype(np.int32) for n in (40, 57)]
  plain, fused = (perplexity_at_length(Llama(c), params, documents, 16, 8) for c in (CONFIG, chunked))
  assert plain.tokens == fused.tokens
  np.testing.assert_allclose(fused.loss, plain.loss, rtol=1e-6)
  plain, fused = (loss_by_position(Llama(c), params, documents, 16, num_bins=4).loss for c in (CONFIG, chunked))
  np.testing.assert_allclose(fused, plain, rtol=1e-6)
