"""Perplexity against length: the sliding-window protocol of the PI and YaRN papers (yarn `eval/perplexity.py`).

A document (tokens without BOS) is read in windows of `max_len` tokens as the model sees them: BOS, then
max_len - 1 document tokens (max_len without a BOS). Window k starts at document token k * stride; the first
window scores every token it holds (the document's first token predicted from BOS), each later one only the
tokens past the previous window's end (the last `stride` of a full window), so every document token is scored
once, with up to max_len - 1 tokens before it. Reading stops with the window that reaches the document's end.

Two figures: `perplexity`, token-weighted over all documents (exp of the mean NLL of all scored tokens), the
default; and `window_mean_perplexity`, exp of the mean over windows of each window's mean NLL, the number YaRN's
script prints. Documents shorter than one window (max_len - 1 tokens) are skipped and counted; when none is long
enough the call raises.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from longjax.nn import Llama
from longjax.sharding import fetchable
from longjax.evaluate.loss_by_position import token_losses


@dataclasses.dataclass(frozen=True)
class LengthResult:
  length: int  # tokens a window holds, BOS included
  stride: int  # the stride used: min(configured stride, document tokens a window holds)
  loss: float  # mean negative log-likelihood per scored token (nats)
  perplexity: float  # token-weighted: exp(loss)
  tokens: int  # scored tokens
  documents: int  # documents read
  window_mean_perplexity: float = math.nan  # YaRN's figure: exp(mean over windows of the window's mean NLL)
  windows: int = 0
  skipped: int = 0  # documents shorter than one window, not read


@dataclasses.dataclass(frozen=True)
class Window:
  """A window of document tokens [begin, end), those from `first_scored` on scored."""
  begin: int
  end: int
  first_scored: int


def windows(num_tokens: int, window_tokens: int, stride: int) -> list[Window]:
  """The windows over a document of num_tokens tokens, each holding up to window_tokens document tokens (yarn's
  `max_tokenized_len`), begins stride apart; stride <= window_tokens so that no token is skipped."""
  if not 0 < stride <= window_tokens:
    raise ValueError(f"perplexity: stride must be in 1..{window_tokens}, got {stride}")
  out, previous_end = [], 0
  for begin in range(0, num_tokens, stride):
    end = min(begin + window_tokens, num_tokens)
    out.append(Window(begin, end, previous_end))
    previous_end = end
    if end == num_tokens:
      break
  return out


@functools.partial(jax.jit, static_argnames=("model",))
def _window_losses(model: Llama, params, tokens, scored):
  """tokens int32[B, T + 1]; scored float32[B, T] (1 for scored targets) -> (NLL sums float32[B], counts [B])."""
  losses = token_losses(model, params, tokens) * scored
  return jnp.sum(losses, axis=1), jnp.sum(scored, axis=1)


def perplexity_at_length(model: Llama, params, documents: Sequence[np.ndarray], max_len: int, stride: int,
                         bos_id: int | None, batch_size: int = 4, pad_id: int = 0) -> LengthResult:
  """Perplexity of `documents` (token arrays without BOS) read in windows of max_len tokens, BOS first unless
  bos_id is None. The model runs on max_len tokens a window (one padding target past them is never scored)."""
  prefix = [] if bos_id is None else [bos_id]
  window_tokens = max_len - len(prefix)
  stride = min(stride, window_tokens)
  rows, masks, skipped, used = [], [], 0, 0
  for tokens in documents:
    tokens = np.asarray(tokens, np.int32)
    if len(tokens) < window_tokens:
      skipped += 1
      continue
    used += 1
    for w in windows(len(tokens), window_tokens, stride):
      row = np.full(max_len + 1, pad_id, np.int32)
      row[:len(prefix)] = prefix
      row[len(prefix):len(prefix) + w.end - w.begin] = tokens[w.begin:w.end]
      # row position p holds document token begin + p - len(prefix); target index t is row position t + 1
      target = np.arange(max_len) + 1 - len(prefix) + w.begin
      masks.append(((target >= max(w.first_scored, 1 - len(prefix))) & (target < w.end)).astype(np.float32))
      rows.append(row)
  if not rows:
    raise ValueError(f"perplexity: no document has the {window_tokens} tokens a window of {max_len} needs "
                     f"({len(documents)} documents, longest {max((len(d) for d in documents), default=0)})")
  sums, counts = [], []
  for i in range(0, len(rows), batch_size):
    batch, mask = rows[i:i + batch_size], masks[i:i + batch_size]
    pad = batch_size - len(batch)  # keep one compiled shape: pad with copies that score nothing
    batch, mask = batch + [batch[0]] * pad, mask + [np.zeros(max_len, np.float32)] * pad
    loss_sum, n = map(fetchable, _window_losses(model, params, jnp.asarray(np.stack(batch)),
                                                jnp.asarray(np.stack(mask))))
    sums += np.asarray(loss_sum)[:len(rows[i:i + batch_size])].tolist()
    counts += np.asarray(n)[:len(rows[i:i + batch_size])].tolist()
  sums, counts = np.asarray(sums, np.float64), np.asarray(counts, np.float64)
  loss = float(sums.sum() / counts.sum())
  window_mean = float(np.mean(sums[counts > 0] / counts[counts > 0]))
  return LengthResult(max_len, stride, loss, math.exp(min(loss, 50.0)), int(counts.sum()), used,
                      math.exp(min(window_mean, 50.0)), len(rows), skipped)


def perplexity_vs_length(model: Llama, params, documents: Sequence[np.ndarray], lengths: Sequence[int], stride: int,
                         bos_id: int | None, batch_size: int = 4) -> list[LengthResult]:
  """`perplexity_at_length` at each of `lengths`."""
  return [perplexity_at_length(model, params, documents, n, stride, bos_id, batch_size) for n in lengths]
