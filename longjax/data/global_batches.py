"""The global batch of a step as a function of (dataset, seed, step) only, whatever the process count.

The global batch of B rows is cut into S independent streams (S the largest divisor of B that is at most
the number of documents; S = B, one stream a row, on any real dataset). Stream s is a `PackedBatches`
over the documents at places s, s + S, s + 2S, ... of each epoch's order, with its own shuffle buffer,
and it gives rows s * B/S ... (s + 1) * B/S - 1 of every batch. A process packs only the streams of the
rows its devices hold (`rows`), so reading and packing scale with the rows a host needs, not with the
global batch, and no process ever needs the others' documents or positions.

Why streams rather than one global stream that every process packs and slices: the start of row r of a
packed stream depends on the token counts of every document before it, so each host would tokenize the
whole global batch each step (256 x 128K tokens at 128K context), however many hosts share it.

The state is one `PackedBatches` state per stream; `data_state.gather` assembles the streams of all
processes into one, which any process count restores (elastic resume).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from longjax.config import ConfigError, DataConfig
from longjax.data import synthetic
from longjax.data.packing import PackedBatches
from longjax.data.sources import open_documents, split_key
from longjax.data.tokenizer import get_tokenizer


def num_streams(global_batch_size: int, num_documents: int) -> int:
  """The largest divisor of global_batch_size that is at most num_documents (each stream needs a document)."""
  return max(d for d in range(1, global_batch_size + 1) if global_batch_size % d == 0 and d <= num_documents)


class GlobalBatches:
  """An iterator of dicts of numpy arrays [len(rows), seq_len]: rows `rows` (ascending global row indices) of each
  global batch (see `PackedBatches` for the keys). `make_stream(s, count, rows_per_stream)` builds stream s."""

  def __init__(self, make_stream, *, global_batch_size: int, streams: int, rows: Sequence[int] | None = None):
    self.global_batch_size = global_batch_size
    self.streams = streams
    self.rows_per_stream = global_batch_size // streams
    rows = range(global_batch_size) if rows is None else rows
    if any(not 0 <= r < global_batch_size for r in rows):
      raise ValueError(f"rows {list(rows)} must be in [0, global_batch_size={global_batch_size})")
    self._needed = sorted({r // self.rows_per_stream for r in rows})
    self._streams = {s: make_stream(s, streams, self.rows_per_stream) for s in self._needed}
    # Rows handed out: every row of the needed streams, in global order (a superset of `rows`).
    self.rows = [s * self.rows_per_stream + i for s in self._needed for i in range(self.rows_per_stream)]

  def __iter__(self) -> GlobalBatches:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [next(self._streams[s]) for s in self._needed]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

  def get_state(self) -> dict:
    """{"streams": {stream index: PackedBatches state}} for the streams this process packs."""
    return {"streams": {s: self._streams[s].get_state() for s in self._needed}, "num_streams": self.streams}

  def set_state(self, state: dict) -> None:
    """Resume this process's streams from a gathered state (`data_state.gather`) of any process count."""
    if "streams" not in state or int(state.get("num_streams", -1)) != self.streams:
      theirs = state.get("num_streams", "a per-process state of an earlier longjax")
      raise ConfigError(f"data iterator state with streams={theirs} does not match this run's {self.streams} "
                        "(the largest divisor of train.global_batch_size that is at most the number of documents): "
                        "resume with the same dataset and global batch size")
    saved = {int(s): value for s, value in state["streams"].items()}
    missing = [s for s in self._needed if s not in saved]
    if missing:
      raise ConfigError(f"data iterator state has no stream {missing[0]}: it holds {sorted(saved)}")
    for s in self._needed:
      self._streams[s].set_state(saved[s])


def make_batches(data: DataConfig, *, split: str, seq_len: int, global_batch_size: int, seed: int,
                 rows: Sequence[int] | None = None, landmarks: tuple[int, int] | None = None) -> GlobalBatches:
  """Rows `rows` (default: all) of the global batches of `split`, global_batch_size rows a step.

  `landmarks` (landmark_block, landmark_id) inserts landmark tokens; the id must be one the tokenizer never makes.
  Retrieval documents (data.retrieval_rate) and PoSE positions (data.pose_target_length) are for
  data.train_split only; every split is shuffled. data.shuffle_buffer rows are shared out among the streams.
  """
  tokenizer = get_tokenizer(data)
  if landmarks is not None and landmarks[1] < tokenizer.vocab_size:
    raise ConfigError(f"model.attention.landmark.id={landmarks[1]} is invalid: the tokenizer makes ids below "
                      f"{tokenizer.vocab_size}; reserve one it never produces (>= {tokenizer.vocab_size}, "
                      "< model.vocab_size)")
  documents = open_documents(data, split)
  if not len(documents):
    raise ConfigError(f"{split_key(data, split)}={split!r} is invalid: it has no documents")
  streams = num_streams(global_batch_size, len(documents))
  train = split == data.train_split
  retrieval = synthetic.retrieval_generator(data)

  def make_stream(index: int, count: int, batch_size: int) -> PackedBatches:
    return PackedBatches(documents, tokenizer, seq_len=seq_len, batch_size=batch_size, seed=seed,
                         shuffle=data.shuffle, add_bos=data.add_bos, add_eos=data.add_eos, process_index=index,
                         process_count=count, shuffle_buffer=-(-data.shuffle_buffer // count), retrieval=retrieval,
                         retrieval_rate=data.retrieval_rate if train else 0.0, retrieval_rows=data.retrieval_rows,
                         retrieval_loss=data.retrieval_loss, retrieval_answer_weight=data.retrieval_answer_weight,
                         landmarks=landmarks,
                         pose_target_length=data.pose_target_length if train else 0, pose_chunks=data.pose_chunks)

  return GlobalBatches(make_stream, global_batch_size=global_batch_size, streams=streams, rows=rows)
