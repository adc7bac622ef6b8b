"""Packed batches of tokens from one stream of documents, with a small exact resume state.

Documents are tokenized (with bos/eos when asked) and concatenated into one stream, epoch
after epoch. Each row holds `seq_len + 1` consecutive stream tokens: inputs are row[:-1] and targets
row[1:]. Consecutive rows overlap by one token (row k starts at stream token k * seq_len), so every
token after the first is a target exactly once and long documents continue into the next row, their
positions still counting. Rows never pad, except after the last epoch when `num_epochs` is set.

Streams share the documents: epoch e orders all documents (a permutation seeded by (seed, e) when
shuffling), and stream p of P (`process_index`, `process_count`) takes the documents at places p, p + P,
p + 2P, ... of that order. Shares are disjoint, deterministic and need no communication. The global batch
of a training step is made of such streams (see global_batches.py), whatever the number of processes.

Rows then pass through a shuffle buffer (`shuffle_buffer` rows, 0 disables) so that a batch mixes
documents: the packer fills the buffer with its next rows, which are emitted in the order of a permutation
seeded by (seed, stream, buffer number), and the buffer is refilled when it is empty. Each stream
shuffles its own rows.

With `retrieval_rate` > 0, each document is replaced, with that probability, by a synthetic retrieval
document sized to a row (`retrieval(rng, n_chars)`, see synthetic.py); the draw and the document are
seeded by (seed, epoch, document index), so they need no state. With `retrieval_rows`, a retrieval document
starts a row (the rest of the row before it is padding) and owns it: the next row starts at the next document, so
a key is never cut from its question; its length is drawn between half a row and a row (a model that sees every
answer at one place learns the place, not the retrieval). With `retrieval_loss="answer"`, a retrieval document's
targets keep their loss only on its answers (synthetic.Pieces); the template and filler around them are masked.
`retrieval_answer_weight` scales an answer's loss_mask: a row of text has hundreds of targets and a passkey row a
handful, so in a token-weighted loss the text alone would set the gradient.

With `landmarks` = (landmark_block, landmark_id) (landmark attention, Mohtashami & Jaggi 2023), each document's
tokens get the landmark id after every landmark_block ordinary tokens (`insert_landmarks`), so positions count
landmarks and a landmark sits where position % (landmark_block + 1) == landmark_block, as in the reference's
`add_mem_tokens`. A target that is a landmark has loss_mask 0: the reference (non-flash path) trains the token
before a landmark to predict it, a deterministic token that generation inserts anyway; the landmark itself keeps
its target, the next ordinary token, which is what generation samples from after inserting it.

With `pose_target_length` > 0 (PoSE, see pose.py), batches also carry `pose_positions`: each row, as one
sequence, cut into `pose_chunks` chunks with skipped position ids between them, seeded by (seed, stream,
the row's stream position), so they need no state.

The state is the stream position of the packer's next row (epoch, document, offset) and, for the buffer,
the position at which it was filled, its number and how many of its rows were emitted: a restore refills
it from that position (the rows themselves, up to 256 x 128K tokens, are never saved).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from longjax.config import ConfigError
from longjax.data import synthetic
from longjax.data.pose import pose_positions
from longjax.data.tokenizer import Tokenizer

# Tags that keep the seeded random streams apart (the epoch's document order is seeded by (seed, epoch)).
_SHUFFLE_STREAM, _RETRIEVAL_STREAM, _POSE_STREAM = 1, 2, 3
_BUFFER_KEYS = ("buffer_epoch", "buffer_document", "buffer_offset", "buffer_block", "buffer_taken")


def insert_landmarks(ids, block: int, landmark_id: int, start: int = 0) -> np.ndarray:
  """int32 ids with landmark_id after every `block` ordinary tokens, counted from stream position `start` (a
  position that already counts landmarks, e.g. a cache's length): the landmark slots are p % (block + 1) == block."""
  ids = np.asarray(ids, np.int32)
  before = start - start // (block + 1)  # ordinary tokens before `start`
  ordinal = before + np.arange(len(ids))
  closes = (ordinal + 1) % block == 0
  out = np.empty(len(ids) + int(closes.sum()), np.int32)
  places = np.arange(len(ids)) + np.cumsum(closes) - closes  # each token shifted by the landmarks before it
  out[places] = ids
  out[places[closes] + 1] = landmark_id
  return out


class PackedBatches:
  """An iterator of dicts of numpy arrays, each [batch_size, seq_len]:

  inputs, targets: int32 token ids; segment_ids: int32, 1, 2, ... for the documents of an input row,
  0 for padding; positions: int32 place of the input token in its document; loss_mask: float32, 1
  where the target is a real token (and, with retrieval_loss="answer", not a retrieval document's template or
  filler). A target across a document boundary (eos -> next bos) keeps its
  loss, as in LLaMA's packing. `num_epochs` None reads forever; otherwise the last batch is padded
  and iteration stops. `shuffle_buffer` rows are shuffled together (0: rows in stream order);
  `retrieval(rng, n_chars) -> text` replaces a document with probability `retrieval_rate`; `landmarks`
  (landmark_block, landmark_id) inserts landmark tokens; `retrieval_rows` and `retrieval_loss` (see the module
  docstring).
  `pose_target_length` > 0 adds pose_positions: int32 PoSE ids of the row (below that length).
  """

  def __init__(self, documents: Sequence[str], tokenizer: Tokenizer, *, seq_len: int, batch_size: int, seed: int,
               shuffle: bool = True, add_bos: bool = True, add_eos: bool = True, process_index: int = 0,
               process_count: int = 1, num_epochs: int | None = None, shuffle_buffer: int = 0,
               retrieval: Callable[[np.random.Generator, int], synthetic.Pieces] | None = None,
               retrieval_rate: float = 0.0, retrieval_rows: bool = False, retrieval_loss: str = "all",
               retrieval_answer_weight: float = 1.0,
               landmarks: tuple[int, int] | None = None, pose_target_length: int = 0, pose_chunks: int = 2):
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
    if len(documents) < process_count:
      raise ValueError(f"{len(documents)} documents cannot be shared by {process_count} processes")
    if seq_len < 1 or batch_size < 1:
      raise ValueError(f"seq_len={seq_len} and batch_size={batch_size} must be >= 1")
    if shuffle_buffer < 0 or not 0 <= retrieval_rate <= 1:
      raise ValueError(f"shuffle_buffer={shuffle_buffer} must be >= 0 and retrieval_rate={retrieval_rate} in [0, 1]")
    if retrieval_loss not in ("all", "answer"):
      raise ValueError(f"retrieval_loss={retrieval_loss!r} must be 'all' or 'answer'")
    if pose_target_length and not (pose_target_length > seq_len and 2 <= pose_chunks <= seq_len):
      raise ValueError(f"pose_target_length={pose_target_length} must exceed seq_len={seq_len} and pose_chunks="
                       f"{pose_chunks} be in [2, seq_len]")
    self.documents = documents
    self.tokenizer = tokenizer
    self.seq_len = seq_len
    self.batch_size = batch_size
    self.seed = seed
    self.shuffle = shuffle
    self.add_bos = add_bos
    self.add_eos = add_eos
    self.process_index = process_index
    self.process_count = process_count
    self.num_epochs = num_epochs
    self.shuffle_buffer = shuffle_buffer
    self.retrieval = retrieval if retrieval_rate > 0 else None
    self.retrieval_rate = retrieval_rate
    self.retrieval_rows = retrieval_rows
    self.retrieval_loss = retrieval_loss
    self.retrieval_answer_weight = retrieval_answer_weight
    self.landmarks = landmarks
    self.pose_target_length = pose_target_length
    self.pose_chunks = pose_chunks
    self._position = (0, 0, 0)  # (epoch, document place in this process's share, token offset)
    self._share_cache: tuple[int, np.ndarray] | None = None
    # (epoch, document) -> (ids, loss weight of each id as a target, whether it is a retrieval document)
    self._token_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, bool]] = {}
    self._retrieval_chars: int | None = None
    # The shuffle buffer: where the packer stood when it was filled, how many buffers were filled, how many
    # rows of the current one were emitted, and its (tokens, segments, positions, weights, order); None until
    # needed.
    self._buffer_start = (0, 0, 0)
    self._block = 0
    self._taken = 0
    self._buffer: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

  def __iter__(self) -> PackedBatches:
    return self

  def get_state(self) -> dict[str, int]:
    """A small JSON-serializable position; `set_state` on a like iterator resumes the exact stream."""
    epoch, document, offset = self._position
    buffer = (*self._buffer_start, self._block, self._taken)
    return {"epoch": epoch, "document": document, "offset": offset, "num_documents": len(self.documents),
            "process_index": self.process_index, "process_count": self.process_count,
            **dict(zip(_BUFFER_KEYS, buffer))}

  def set_state(self, state: dict[str, int]) -> None:
    """Resume at a position from `get_state` (seq_len and batch_size may differ; the stream is the same)."""
    ours = (len(self.documents), self.process_index, self.process_count)
    theirs = (state["num_documents"], state["process_index"], state["process_count"])
    if ours != theirs:
      raise ConfigError(f"data iterator state (documents, stream, streams)={theirs} does not match this run's "
                        f"{ours}: resume with the same dataset and stream count")
    self._position = (int(state["epoch"]), int(state["document"]), int(state["offset"]))
    # A state saved before the buffer existed has no buffer keys: its rows were all emitted.
    epoch, document, offset, block, taken = (int(state.get(k, 0)) for k in _BUFFER_KEYS)
    if taken and not self.shuffle_buffer:
      raise ConfigError("data.shuffle_buffer=0 is invalid for this checkpoint: it was saved with rows left in its "
                        "shuffle buffer; resume with the shuffle_buffer it was saved with")
    self._buffer_start, self._block, self._taken, self._buffer = (epoch, document, offset), block, taken, None

  def _share(self, epoch: int) -> np.ndarray:
    """Indices of this process's documents in epoch `epoch`, in reading order."""
    if self._share_cache is None or self._share_cache[0] != epoch:
      count = len(self.documents)
      order = np.random.default_rng((self.seed, epoch)).permutation(count) if self.shuffle else np.arange(count)
      self._share_cache = (epoch, order[self.process_index::self.process_count])
    return self._share_cache[1]

  def _tokens(self, epoch: int, document: int) -> np.ndarray:
    return self._document(epoch, document)[0]

  def _document(self, epoch: int, document: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(ids, float32 loss weight of each id as a target, whether it is a retrieval document)."""
    key = (epoch, document)
    if key not in self._token_cache:
      if len(self._token_cache) > 2:  # A row rarely spans more than the current and the next document.
        self._token_cache.pop(next(iter(self._token_cache)))
      index = int(self._share(epoch)[document])
      rng = np.random.default_rng((self.seed, _RETRIEVAL_STREAM, epoch, index)) if self.retrieval else None
      is_retrieval = rng is not None and rng.random() < self.retrieval_rate
      if is_retrieval:
        n_chars = self._retrieval_length()
        if self.retrieval_rows:  # anywhere from half a row to a row, so that the answer's place says nothing
          n_chars = int(rng.integers(n_chars // 2, n_chars + 1))
        ids, weights = self._encode_pieces(self.retrieval(rng, n_chars))
      else:
        ids = np.asarray(self.tokenizer.encode(self.documents[index], bos=self.add_bos, eos=self.add_eos), np.int32)
        weights = np.ones(len(ids), np.float32)
      if self.landmarks is not None:
        landmarked = insert_landmarks(ids, *self.landmarks)
        # The tokens keep their weights; a landmark's is 1 (loss_mask drops landmark targets anyway).
        landmarked_weights = np.ones(len(landmarked), np.float32)
        landmarked_weights[landmarked != self.landmarks[1]] = weights
        ids, weights = landmarked, landmarked_weights
      self._token_cache[key] = (ids, weights, is_retrieval)
    return self._token_cache[key]

  def _encode_pieces(self, pieces: synthetic.Pieces) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the pieces (bos/eos around them, each piece encoded alone) and their loss weights."""
    ids = [self.tokenizer.encode(piece, bos=self.add_bos and i == 0, eos=self.add_eos and i == len(pieces) - 1)
           for i, (piece, _) in enumerate(pieces)]
    answer_only = self.retrieval_loss == "answer"
    weights = [np.full(len(piece_ids), self.retrieval_answer_weight if is_answer else float(not answer_only),
                       np.float32) for piece_ids, (_, is_answer) in zip(ids, pieces)]
    if answer_only and self.add_eos:  # eos closes the document, it is not an answer
      weights[-1][-1] = 0.0
    return np.asarray(np.concatenate(ids), np.int32), np.concatenate(weights)

  def _retrieval_length(self) -> int:
    """Characters of a synthetic document whose tokens (with bos/eos) fill about one row."""
    if self._retrieval_chars is None:
      sample = synthetic.PASSKEY_FILLER * 8
      chars_per_token = len(sample) / max(len(self.tokenizer.encode(sample, bos=False, eos=False)), 1)
      tokens = self.seq_len + 1
      if self.landmarks is not None:  # landmarks take a row's slots too
        tokens -= tokens // (self.landmarks[0] + 1)
      tokens -= int(self.add_bos) + int(self.add_eos)
      self._retrieval_chars = max(int(tokens * chars_per_token), 1)
    return self._retrieval_chars

  def _settle(self, position: tuple[int, int, int]) -> tuple[int, int, int] | None:
    """The first position at or after `position` that holds a token; None after the last epoch."""
    epoch, document, offset = position
    skipped = 0
    while True:
      if self.num_epochs is not None and epoch >= self.num_epochs:
        return None
      if document >= len(self._share(epoch)):
        epoch, document, offset = epoch + 1, 0, 0
        continue
      if offset < len(self._tokens(epoch, document)):
        return epoch, document, offset
      skipped += 1
      if skipped > len(self._share(epoch)) + 1:
        raise ValueError("no document of this process's share has any token")
      document, offset = document + 1, 0

  def _row(self, tokens: np.ndarray, segments: np.ndarray, positions: np.ndarray, weights: np.ndarray) -> bool:
    """Fill one row of seq_len + 1 stream tokens in place and advance by seq_len (with retrieval_rows, to the
    document after a retrieval document or to the one that starts the next row); False if none is left."""
    length = self.seq_len + 1
    filled, segment, cursor, next_start = 0, 0, self._position, None
    while filled < length and (cursor := self._settle(cursor)) is not None:
      epoch, document, offset = cursor
      doc, doc_weights, is_retrieval = self._document(epoch, document)
      owns_row = self.retrieval_rows and is_retrieval
      if owns_row and filled:
        if filled > 1:  # the rest of this row is padding; the retrieval document starts the next one
          next_start = cursor
          break
        filled, segment = 0, 0  # a lone token carried over from the last row was a target there already
      take = min(length - filled, len(doc) - offset)
      tokens[filled:filled + take] = doc[offset:offset + take]
      positions[filled:filled + take] = np.arange(offset, offset + take)
      weights[filled:filled + take] = doc_weights[offset:offset + take]
      segment += 1
      segments[filled:filled + take] = segment
      if next_start is None and filled + take > self.seq_len:
        next_start = (epoch, document, offset + self.seq_len - filled)
      filled += take
      cursor = (epoch, document, offset + take)
      if owns_row:  # alone in its row; what is left of it after this row, if more than the last token, goes on
        if offset + take >= len(doc) - 1:
          next_start = (epoch, document + 1, 0)
        break
    if filled < 2:  # A lone token has no target.
      return False
    self._position = next_start if next_start is not None else (self.num_epochs, 0, 0)
    return True

  def _fill_buffer(self, number: int) -> int:
    """Pack up to shuffle_buffer rows from the current position as buffer `number` (from 0); their count."""
    arrays = self._empty_rows(self.shuffle_buffer)
    rows = 0
    while rows < self.shuffle_buffer and self._row(*(array[rows] for array in arrays)):
      rows += 1
    order = np.random.default_rng((self.seed, _SHUFFLE_STREAM, self.process_index, number)).permutation(rows)
    self._buffer = (*arrays, order)
    return rows

  def _empty_rows(self, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Padding rows, [count, seq_len + 1]: tokens, segments, positions, weights."""
    shape = (count, self.seq_len + 1)
    return (np.full(shape, self.tokenizer.pad_id, np.int32), np.zeros(shape, np.int32), np.zeros(shape, np.int32),
            np.zeros(shape, np.float32))

  def _refill_after_restore(self) -> None:
    """Rebuild the buffer a restored state was reading from; the packer must end where the state says."""
    saved_position, self._position = self._position, self._buffer_start
    self._fill_buffer(self._block - 1)
    if self._position != saved_position:
      raise ConfigError(f"data.shuffle_buffer={self.shuffle_buffer} is invalid for this checkpoint: refilling its "
                        "shuffle buffer does not reach its saved position; resume with the data.shuffle_buffer and "
                        "train.seq_len it was saved with")

  def _buffered_row(self, tokens: np.ndarray, segments: np.ndarray, positions: np.ndarray,
                    weights: np.ndarray) -> bool:
    """Copy the buffer's next row in place (filling the buffer when it is empty); False if none is left."""
    if self._buffer is None and self._taken:
      self._refill_after_restore()
    if self._buffer is None or self._taken == len(self._buffer[4]):
      start = self._position
      if not self._fill_buffer(self._block):
        self._buffer, self._taken = None, 0  # The stream has ended; the state holds no rows.
        return False
      self._buffer_start, self._block, self._taken = start, self._block + 1, 0
    row = self._buffer[4][self._taken]
    tokens[:], segments[:], positions[:], weights[:] = (array[row] for array in self._buffer[:4])
    self._taken += 1
    return True

  def __next__(self) -> dict[str, np.ndarray]:
    tokens, segments, positions, weights = self._empty_rows(self.batch_size)
    next_row = self._buffered_row if self.shuffle_buffer else self._row
    # PoSE draws are seeded by the state the batch starts from, so a resumed run draws the same ones.
    pose_seed = (self.seed, _POSE_STREAM, self.process_index, *self.get_state().values())
    rows = 0
    while rows < self.batch_size and next_row(tokens[rows], segments[rows], positions[rows], weights[rows]):
      rows += 1
    if rows == 0:
      raise StopIteration
    batch = {
        "inputs": np.ascontiguousarray(tokens[:, :-1]),
        "targets": np.ascontiguousarray(tokens[:, 1:]),
        "segment_ids": np.ascontiguousarray(segments[:, :-1]),
        "positions": np.ascontiguousarray(positions[:, :-1]),
        "loss_mask": self._loss_mask(tokens[:, 1:], segments[:, 1:], weights[:, 1:]),
    }
    if self.pose_target_length:
      rng = np.random.default_rng(pose_seed)
      batch["pose_positions"] = np.stack([pose_positions(rng, self.seq_len, self.pose_target_length, self.pose_chunks)
                                          for _ in range(self.batch_size)])
    return batch


  def _loss_mask(self, targets: np.ndarray, segments: np.ndarray, weights: np.ndarray) -> np.ndarray:
    real = segments > 0
    if self.landmarks is not None:
      real &= targets != self.landmarks[1]
    return real.astype(np.float32) * weights
