"""Mean token loss against position: where in a long window a positional method stops predicting well.

Each document of at least `length + 1` tokens gives one window, its first `length + 1` tokens, read in one
forward pass; the loss of the target at each position 1..length is averaged over documents and then over
`num_bins` equal position bins.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from longjax.inference.score import token_nll
from longjax.nn import Llama
from longjax.sharding import fetchable


@dataclasses.dataclass(frozen=True)
class PositionLoss:
  """Mean loss (nats) of the targets in position bins [starts[i], ends[i]) of a window of `length` tokens."""

  length: int
  starts: list[int]
  ends: list[int]
  loss: list[float]
  documents: int


def token_losses(model: Llama, params, tokens):
  """tokens int32[B, T + 1] -> float32[B, T]: the loss of target t + 1 given tokens 0..t.

  One compiled call (`inference.token_nll`) whose LM head runs chunk by chunk, so [B, T, vocab] logits never
  exist at once: at 32K tokens and a 32K vocabulary they would take 4 GiB a sequence.
  """
  inputs = tokens[:, :-1]
  return token_nll(model, params, inputs, tokens[:, 1:], seq_len=jnp.int32(inputs.shape[1]))


def loss_by_position(model: Llama, params, documents: Sequence[np.ndarray], length: int, num_bins: int = 16,
                     batch_size: int = 4) -> PositionLoss:
  """Mean loss per position bin over the first length + 1 tokens of each document long enough."""
  rows = [np.asarray(d[:length + 1], np.int32) for d in documents if len(d) >= length + 1]
  if not rows:
    raise ValueError(f"loss_by_position: no document has {length + 1} tokens")
  total = np.zeros(length, np.float64)
  for i in range(0, len(rows), batch_size):
    batch = rows[i:i + batch_size]
    pad = batch_size - len(batch)  # one compiled shape; the copies are dropped below
    losses = np.asarray(fetchable(token_losses(model, params, jnp.asarray(np.stack(batch + [batch[0]] * pad)))))
    total += losses[:len(batch)].sum(axis=0)
  mean = total / len(rows)
  edges = np.linspace(0, length, min(num_bins, length) + 1).round().astype(int)
  # position p holds the target token p + 1 (its context: p + 1 tokens)
  loss = [float(mean[a:b].mean()) for a, b in zip(edges[:-1], edges[1:])]
  return PositionLoss(length, [int(a) + 1 for a in edges[:-1]], [int(b) + 1 for b in edges[1:]], loss, len(rows))
