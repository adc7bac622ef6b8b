"""Perplexity against length: the sliding-window protocol of the PI and YaRN papers.

For each evaluation length `max_len`, every document with at least `max_len`
tokens is read in windows of exactly `max_len` tokens moved by `stride` (at most
`max_len`, so that no token is skipped; the last window is aligned to the
document's end); only the tokens new to a window are scored, each conditioned on up to `max_len - 1` tokens before it. The
result is token-weighted over all documents (yarn `eval/perplexity.py`).
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
from longjax.evaluate.loss_by_position import token_losses


@dataclasses.dataclass(frozen=True)
class LengthResult:
  length: int
  stride: int  # the stride used: min(configured stride, length)
  loss: float  # mean negative log-likelihood per scored token (nats)
  perplexity: float
  tokens: int  # scored tokens
  documents: int


def windows(num_tokens: int, max_len: int, stride: int) -> list[tuple[int, int]]:
  """(begin, first_new) of each window over a document of num_tokens >= max_len tokens.

  A window holds tokens [begin, begin + max_len); targets from index first_new on are scored
  (token 0 of the document has no prediction, so scoring starts at 1).
  """
  out, scored_to, begin = [], 1, 0
  while True:
    begin = min(begin, num_tokens - max_len)
    end = begin + max_len
    out.append((begin, scored_to))
    scored_to = end
    if end >= num_tokens:
      return out
    begin += stride


@functools.partial(jax.jit, static_argnames=("model",))
def _window_loss(model: Llama, params, tokens, first_new):
  """tokens int32[B, T]; first_new int32[B] (window index of the first scored target) -> (sum NLL, count)."""
  scored = (jnp.arange(1, tokens.shape[1])[None, :] >= first_new[:, None]).astype(jnp.float32)
  return jnp.sum(token_losses(model, params, tokens) * scored), jnp.sum(scored)


def perplexity_at_length(model: Llama, params, documents: Sequence[np.ndarray], max_len: int, stride: int,
                         batch_size: int = 4) -> LengthResult:
  """Token-weighted perplexity of `documents` (token arrays) read with windows of max_len tokens."""
  stride = min(stride, max_len)
  rows, firsts, used = [], [], 0
  for tokens in documents:
    if len(tokens) < max_len + 1:
      continue
    used += 1
    for begin, scored_to in windows(len(tokens), max_len + 1, stride):
      rows.append(tokens[begin:begin + max_len + 1])
      firsts.append(scored_to - begin)
  if not rows:
    return LengthResult(max_len, stride, math.nan, math.nan, 0, 0)
  total = count = 0.0
  for i in range(0, len(rows), batch_size):
    batch, first = rows[i:i + batch_size], firsts[i:i + batch_size]
    pad = batch_size - len(batch)  # keep one compiled shape: pad with copies that score nothing
    batch, first = batch + [batch[0]] * pad, first + [max_len + 1] * pad
    loss_sum, n = _window_loss(model, params, jnp.asarray(np.stack(batch), jnp.int32),
                               jnp.asarray(first, jnp.int32))
    total, count = total + float(loss_sum), count + float(n)
  loss = total / count
  return LengthResult(max_len, stride, loss, math.exp(min(loss, 50.0)), int(count), used)


def perplexity_vs_length(model: Llama, params, documents: Sequence[np.ndarray], lengths: Sequence[int], stride: int,
                         batch_size: int = 4) -> list[LengthResult]:
  return [perplexity_at_length(model, params, documents, n, stride, batch_size) for n in lengths]
