"""Evaluation that shows whether a context extension works: perplexity against length, loss by position,
passkey retrieval, needle-in-a-haystack and KV-cache memory; `tasks.TASKS` runs each on a trained run."""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

import numpy as np

from longjax import checkpoint
from longjax.config import Config, DataConfig
from longjax.data import get_tokenizer, open_documents
from longjax.evaluate.kv_cache import CacheSize, kv_cache_bytes, kv_cache_size, kv_cache_table
from longjax.evaluate.loss_by_position import PositionLoss, loss_by_position
from longjax.evaluate.needle import evaluate_needle, evaluate_needle_gkamradt, needle_prompt
from longjax.evaluate.passkey import RetrievalGrid, evaluate_passkey, passkey_prompt
from longjax.evaluate.perplexity import LengthResult, perplexity_at_length, perplexity_vs_length, windows
from longjax.evaluate.plots import (plot_kv_cache, plot_loss_by_position, plot_losses, plot_perplexity_vs_length,
                                   plot_retrieval_heatmap, plot_ruler)


def eval_documents(data: DataConfig, max_documents: int, min_tokens: int = 0, max_tokens: int | None = None,
                   bos: bool | None = None, texts: Sequence[str] | None = None) -> list[np.ndarray]:
  """The `max_documents` longest documents of the eval split, or of `texts` (at least `min_tokens` long), tokenized
  (with BOS if `bos`, by default `data.add_bos`) and cut to `max_tokens`."""
  tokenizer = get_tokenizer(data)
  documents = texts if texts is not None else open_documents(data, data.eval_split)
  bos = data.add_bos if bos is None else bos
  tokens = [np.asarray(tokenizer.encode(documents[i], bos=bos), np.int32) for i in range(len(documents))]
  tokens = [t for t in tokens if len(t) >= min_tokens]
  tokens.sort(key=len, reverse=True)
  return [t[:max_tokens] for t in tokens[:max_documents]]


def evaluate_perplexity(config: Config, params, documents: list[np.ndarray]) -> list[LengthResult]:
  """Perplexity at each of `config.eval.lengths` for the model of `config` with `params`; a leading BOS of a
  document (`eval_documents` adds one) is dropped, as every window starts with its own."""
  from longjax.nn import Llama

  bos_id = get_tokenizer(config.data).bos_id if config.data.add_bos else None
  documents = [d[1:] if bos_id is not None and len(d) and d[0] == bos_id else d for d in documents]
  return perplexity_vs_length(Llama(config.model), params, documents, config.eval.lengths, config.eval.stride, bos_id)


def write_json(results, path: str) -> None:
  """JSON-able results to `path` (any epath: local, gs://), creating its directory."""
  path = checkpoint.workdir_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(results, indent=2))


def write_results(results: dict[str, list[LengthResult]], path: str) -> None:
  write_json({name: [dataclasses.asdict(r) for r in rs] for name, rs in results.items()}, path)


__all__ = ["CacheSize", "LengthResult", "PositionLoss", "RetrievalGrid", "eval_documents", "evaluate_needle",
           "evaluate_needle_gkamradt", "evaluate_passkey", "evaluate_perplexity", "kv_cache_bytes", "kv_cache_size",
           "kv_cache_table", "loss_by_position", "needle_prompt", "passkey_prompt", "perplexity_at_length",
           "perplexity_vs_length", "plot_kv_cache", "plot_loss_by_position", "plot_losses",
           "plot_perplexity_vs_length", "plot_retrieval_heatmap", "plot_ruler", "windows", "write_json",
           "write_results"]
