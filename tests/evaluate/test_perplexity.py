"""The sliding-window perplexity protocol of yarn `eval/perplexity.py`: every window is BOS + max_len - 1 tokens,
windows start `stride` apart, the first scores all its tokens and the others their last `stride`; token-weighted
by default, YaRN's mean of window means by name; short documents counted, none long enough an error."""

import dataclasses
import math

import jax
import numpy as np
import pytest

from longjax.config import ModelConfig
from longjax.evaluate import loss_by_position, perplexity_at_length, windows
from longjax.nn import Llama, init_params

CONFIG = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=2)
BOS = 1


@pytest.mark.parametrize("num_tokens, window, stride", [(100, 16, 5), (100, 16, 16), (64, 64, 8), (300, 32, 32),
                                                        (15, 16, 4)])
def test_windows_score_each_token_once(num_tokens, window, stride):
  scored = []
  for w in windows(num_tokens, window, stride):
    assert w.begin % stride == 0 and w.end - w.begin <= window and w.end <= num_tokens
    scored.extend(range(w.first_scored, w.end))
  assert scored == list(range(num_tokens))


def test_windows_are_yarns():
  """yarn: begin_loc in range(0, seq_len, stride); end_loc = min(begin_loc + max_len - 1, seq_len); trg_len =
  end_loc - prev_end_loc; stop when end_loc == seq_len."""
  from longjax.evaluate.perplexity import Window

  assert windows(40, 15, 8) == [Window(0, 15, 0), Window(8, 23, 15), Window(16, 31, 23), Window(24, 39, 31),
                                Window(32, 40, 39)]


def _nll(params, row, targets):
  logp = np.asarray(jax.nn.log_softmax(Llama(CONFIG).apply({"params": params}, np.asarray(row)[None])[0]))
  return [-logp[i - 1, row[i]] for i in targets]


def test_every_window_starts_with_bos_and_the_loss_matches_a_hand_computation():
  """Defect: only a document's first window started with BOS. 40 tokens, windows of 16 (BOS + 15) moved by 8."""
  params = init_params(CONFIG, jax.random.key(3))
  document = np.random.default_rng(4).integers(3, CONFIG.vocab_size, 40).astype(np.int32)
  per_window = []
  for begin, end, first in [(0, 15, 0), (8, 23, 15), (16, 31, 23), (24, 39, 31), (32, 40, 39)]:
    row = [BOS] + document[begin:end].tolist()
    per_window.append(_nll(params, row, [1 + t - begin for t in range(first, end)]))
  result = perplexity_at_length(Llama(CONFIG), params, [document], 16, 8, bos_id=BOS, batch_size=3)
  nll = [x for w in per_window for x in w]
  assert result.tokens == len(nll) == 40 and result.windows == 5 and result.documents == 1
  np.testing.assert_allclose(result.loss, np.mean(nll), rtol=1e-5)
  np.testing.assert_allclose(result.perplexity, math.exp(np.mean(nll)), rtol=1e-5)
  np.testing.assert_allclose(result.window_mean_perplexity, math.exp(np.mean([np.mean(w) for w in per_window])),
                             rtol=1e-5)


def test_without_bos_windows_hold_max_len_tokens_and_the_first_token_is_not_scored():
  params = init_params(CONFIG, jax.random.key(0))
  document = np.random.default_rng(1).integers(0, CONFIG.vocab_size, 33).astype(np.int32)
  result = perplexity_at_length(Llama(CONFIG), params, [document], 33, 8, bos_id=None)
  expected = _nll(params, document.tolist(), range(1, 33))
  assert result.tokens == 32 and result.windows == 1
  np.testing.assert_allclose(result.loss, np.mean(expected), rtol=1e-5)


def test_short_documents_are_counted_and_none_long_enough_is_an_error():
  """Defect: short documents were dropped silently and all-short gave NaN."""
  params = init_params(CONFIG, jax.random.key(0))
  rng = np.random.default_rng(2)
  documents = [rng.integers(3, CONFIG.vocab_size, n).astype(np.int32) for n in (10, 40, 14, 70)]
  result = perplexity_at_length(Llama(CONFIG), params, documents, 16, 8, bos_id=BOS)
  assert (result.documents, result.skipped, result.tokens) == (2, 2, 40 + 70)
  with pytest.raises(ValueError, match="no document has the 31 tokens a window of 32 needs"):
    perplexity_at_length(Llama(CONFIG), params, documents[:1], 32, 8, bos_id=BOS)


def test_a_uniform_model_has_the_vocabulary_size_as_perplexity():
  params = jax.tree.map(np.zeros_like, init_params(CONFIG, jax.random.key(0)))
  documents = [np.random.default_rng(2).integers(3, CONFIG.vocab_size, n).astype(np.int32) for n in (40, 70)]
  result = perplexity_at_length(Llama(CONFIG), params, documents, 16, 8, bos_id=BOS)
  np.testing.assert_allclose([result.perplexity, result.window_mean_perplexity], CONFIG.vocab_size, rtol=1e-6)
  assert result.tokens == 40 + 70


@pytest.mark.parametrize("loss_chunk", [6, 16])  # 16 positions: 6 -> 3 chunks of 6, 2 padded; 16: one chunk
def test_chunked_head_gives_the_same_perplexity_and_position_losses(loss_chunk):
  """model.loss_chunk: evaluation runs the LM head chunk by chunk (no [B, T, vocab] logits), same numbers."""
  chunked = dataclasses.replace(CONFIG, loss_chunk=loss_chunk)
  params = init_params(CONFIG, jax.random.key(5))
  documents = [np.random.default_rng(6).integers(3, CONFIG.vocab_size, n).astype(np.int32) for n in (40, 57)]
  plain, fused = (perplexity_at_length(Llama(c), params, documents, 16, 8, bos_id=BOS) for c in (CONFIG, chunked))
  assert plain.tokens == fused.tokens
  np.testing.assert_allclose(fused.loss, plain.loss, rtol=1e-6)
  plain, fused = (loss_by_position(Llama(c), params, documents, 16, num_bins=4).loss for c in (CONFIG, chunked))
  np.testing.assert_allclose(fused, plain, rtol=1e-6)


def test_evaluate_perplexity_drops_the_bos_eval_documents_add():
  from longjax.config import Config
  from longjax.evaluate import evaluate_perplexity

  config = Config()
  model = dataclasses.replace(CONFIG, vocab_size=config.model.vocab_size)  # the byte tokenizer's 259 ids, BOS 1
  config = dataclasses.replace(config, model=model, eval=dataclasses.replace(config.eval, lengths=(16,), stride=8))
  params = init_params(model, jax.random.key(0))
  document = np.random.default_rng(0).integers(3, model.vocab_size, 60).astype(np.int32)
  [with_bos] = evaluate_perplexity(config, params, [np.concatenate([[BOS], document]).astype(np.int32)])
  direct = perplexity_at_length(Llama(model), params, [document], 16, 8, bos_id=BOS)
  assert with_bos == direct and direct.tokens == 60
