"""What perplexity_at_length does around the model: the rows it feeds, in batches of one shape, and how it turns the
per-window NLL sums into its figures. The model's per-token losses are replaced by a known function of the target
token (so no model is compiled), and each figure is checked against a plain loop over yarn's windows
(yarn `eval/perplexity.py`: begin in range(0, n, stride), end = min(begin + window, n), the last end - prev_end
labels kept, the model's shift dropping the first)."""

import importlib
import math

import numpy as np
import pytest

from longjax.evaluate import perplexity_at_length, perplexity_vs_length, windows

perplexity_module = importlib.import_module("longjax.evaluate.perplexity")
BOS = 1


def _nll(token):
  return 0.1 * token + 0.05  # a stand-in per-token NLL, a function of the target token only


class Recorder:
  """Stands in for `_window_losses`: records each batch and returns the sums and counts of `_nll` over the scored
  targets."""

  def __init__(self, nll=_nll):
    self.nll, self.tokens, self.scored = nll, [], []

  def __call__(self, model, params, tokens, scored):
    tokens, scored = np.asarray(tokens), np.asarray(scored)
    self.tokens.append(tokens)
    self.scored.append(scored)
    losses = self.nll(tokens[:, 1:].astype(np.float64)) * scored
    return losses.sum(axis=1).astype(np.float32), scored.sum(axis=1)


@pytest.fixture
def recorder(monkeypatch):
  recorder = Recorder()
  monkeypatch.setattr(perplexity_module, "_window_losses", recorder)
  return recorder


def _yarn(documents, max_len, stride, bos_id, pad_id=0):
  """yarn's loop, one window at a time: (rows as the model reads them, padded to max_len + 1; per-window NLL
  sums; per-window counts), documents shorter than one window left out."""
  prefix = [] if bos_id is None else [bos_id]
  window = max_len - len(prefix)
  stride = min(stride, window)
  rows, sums, counts = [], [], []
  for doc in documents:
    doc = [int(t) for t in doc]
    if len(doc) < window:
      continue
    prev_end = 0
    for begin in range(0, len(doc), stride):
      end = min(begin + window, len(doc))
      trg_len = end - prev_end
      inputs = prefix + doc[begin:end]
      labels = [-100] * len(prefix) + doc[begin:end]
      keep_from = len(labels) - trg_len
      labels = [-100] * keep_from + labels[keep_from:]
      targets = [t for t in labels[1:] if t != -100]  # the model's shift: label i is predicted at position i - 1
      rows.append(inputs + [pad_id] * (max_len + 1 - len(inputs)))
      sums.append(sum(_nll(t) for t in targets))
      counts.append(len(targets))
      prev_end = end
      if end == len(doc):
        break
  return rows, sums, counts


CASES = [  # documents' lengths, max_len, stride, bos
    ((40, 10), 16, 8, BOS),  # one document too short
    ((9,), 4, 4, None),  # without BOS the last window holds one token and scores none
    ((23, 7), 6, 1, BOS),  # stride 1
    ((30,), 8, 20, BOS),  # stride past the window: one window's tokens
]


@pytest.mark.parametrize("lengths, max_len, stride, bos_id", CASES)
@pytest.mark.parametrize("pad_id", [0, 7])
def test_rows_and_figures_follow_yarns_loop(recorder, lengths, max_len, stride, bos_id, pad_id):
  rng = np.random.default_rng(len(lengths) + max_len)
  documents = [rng.integers(3, 50, n).astype(np.int32) for n in lengths]
  result = perplexity_at_length(None, None, documents, max_len, stride, bos_id, batch_size=3, pad_id=pad_id)
  rows, sums, counts = _yarn(documents, max_len, stride, bos_id, pad_id)
  # batches of one shape: real rows, then copies that score nothing
  assert all(t.shape == (3, max_len + 1) for t in recorder.tokens)
  seen = np.concatenate(recorder.tokens)[:len(rows)]
  np.testing.assert_array_equal(seen, rows)
  np.testing.assert_array_equal(np.concatenate(recorder.scored)[len(rows):], 0)
  window = max_len - (bos_id is not None)
  loss = sum(sums) / sum(counts)
  window_mean = np.mean([s / c for s, c in zip(sums, counts) if c])
  assert (result.length, result.stride, result.tokens, result.windows) == (
      max_len, min(stride, window), sum(counts), len(rows))
  assert (result.documents, result.skipped) == (sum(n >= window for n in lengths), sum(n < window for n in lengths))
  np.testing.assert_allclose([result.loss, result.perplexity, result.window_mean_perplexity],
                             [loss, math.exp(loss), math.exp(window_mean)], rtol=1e-6)


def test_a_window_that_scores_nothing_is_left_out_of_yarns_mean(recorder):
  """9 tokens, no BOS, windows of 4 moved by 4: the third window holds token 8 alone, which it cannot predict."""
  document = np.arange(10, 19, dtype=np.int32)
  result = perplexity_at_length(None, None, [document], 4, 4, None, batch_size=4)
  first, second = [_nll(t) for t in (11, 12, 13)], [_nll(t) for t in (15, 16, 17)]
  assert (result.windows, result.tokens) == (3, 6)
  np.testing.assert_allclose(result.window_mean_perplexity, math.exp((np.mean(first) + np.mean(second)) / 2),
                             rtol=1e-6)


def test_default_batch_of_four_windows_padded_with_token_zero(recorder):
  documents = [np.arange(3, 43, dtype=np.int32)]  # 5 windows of 15 tokens moved by 8: batches of 4 and 1 + 3
  perplexity_at_length(None, None, documents, 16, 8, BOS)
  assert [t.shape for t in recorder.tokens] == [(4, 17)] * 2
  assert recorder.tokens[0][0, -1] == 0  # the never-scored target past a full window
  assert recorder.tokens[1][0].tolist() == [BOS] + list(range(35, 43)) + [0] * 8


def test_perplexity_vs_length_passes_its_batch_size(recorder):
  documents = [np.arange(3, 43, dtype=np.int32)]
  results = perplexity_vs_length(None, None, documents, [16, 8], 8, BOS, batch_size=2)
  assert [r.length for r in results] == [16, 8]
  assert {t.shape[0] for t in recorder.tokens} == {2}
  recorder.tokens.clear()
  perplexity_vs_length(None, None, documents, [16], 8, BOS)
  assert {t.shape[0] for t in recorder.tokens} == {4}


def test_a_diverged_model_reports_perplexity_e50_instead_of_overflowing(monkeypatch):
  monkeypatch.setattr(perplexity_module, "_window_losses", Recorder(nll=lambda t: 0 * t + 800.0))
  result = perplexity_at_length(None, None, [np.arange(3, 43, dtype=np.int32)], 16, 8, BOS)
  np.testing.assert_allclose(result.loss, 800.0, rtol=1e-6)
  assert result.perplexity == result.window_mean_perplexity == math.exp(50.0)


def test_stride_of_one_reads_every_begin():
  from longjax.evaluate.perplexity import Window

  assert windows(5, 3, 1) == [Window(0, 3, 0), Window(1, 4, 3), Window(2, 5, 4)]


@pytest.mark.parametrize("stride", [0, -1, 16])
def test_a_stride_outside_one_to_the_window_is_named(stride):
  with pytest.raises(ValueError, match=rf"^perplexity: stride must be in 1\.\.15, got {stride}$"):
    windows(40, 15, stride)


def test_no_documents_at_all_is_an_error_that_says_so():
  with pytest.raises(ValueError, match=r"^perplexity: no document has the 15 tokens a window of 16 needs "
                                       r"\(0 documents, longest 0\)$"):
    perplexity_at_length(None, None, [], 16, 8, BOS)
