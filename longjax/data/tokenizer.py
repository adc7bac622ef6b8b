"""Tokenizers behind one interface: byte-level (the embedded default) and SentencePiece (LLaMA).

Both expose `vocab_size`, `bos_id`, `eos_id`, `pad_id`, `encode(text, *, bos, eos) -> list[int]` and
`decode(ids) -> str`. `decode` reads every id it is given and drops the special ones (pad, bos, eos).
"""

from __future__ import annotations

from typing import Iterable, Protocol

from etils import epath
import numpy as np
import sentencepiece as spm

from longjax.config import ConfigError, DataConfig


class Tokenizer(Protocol):
  """What the data pipeline, training and generation need from a tokenizer."""

  @property
  def vocab_size(self) -> int: ...

  @property
  def bos_id(self) -> int: ...

  @property
  def eos_id(self) -> int: ...

  @property
  def pad_id(self) -> int: ...

  def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]: ...

  def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
  """UTF-8 bytes: pad 0, bos 1, eos 2, byte b -> b + 3; 259 ids in all."""

  _OFFSET = 3

  @property
  def vocab_size(self) -> int:
    return 256 + self._OFFSET

  @property
  def bos_id(self) -> int:
    return 1

  @property
  def eos_id(self) -> int:
    return 2

  @property
  def pad_id(self) -> int:
    return 0

  def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
    ids = (np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + self._OFFSET).tolist()
    return [self.bos_id] * bos + ids + [self.eos_id] * eos

  def decode(self, ids: Iterable[int]) -> str:
    """Bytes of ids in [3, 259); specials and ids past the vocabulary (a padded model vocab) are dropped."""
    data = bytes(int(i) - self._OFFSET for i in ids if self._OFFSET <= int(i) < self.vocab_size)
    return data.decode("utf-8", errors="replace")


class SentencePieceTokenizer:
  """A SentencePiece model (LLaMA's tokenizer.model: unk 0, bos 1, eos 2, 32000 pieces).

  LLaMA's model defines no pad piece (its pad_id is -1); then `pad_id` is 0 (<unk>), an id that
  byte-fallback models never produce from text, so padding never collides with a real token in practice.
  `decode` drops pad, bos and eos; with that fallback it also drops <unk>.
  """

  def __init__(self, path: str):
    try:
      model_proto = epath.Path(path).read_bytes()
    except (OSError, ValueError) as e:
      raise ConfigError(f"data.tokenizer_path={path!r} is invalid: cannot read it ({type(e).__name__})") from None
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.LoadFromSerializedProto(model_proto)
    except (RuntimeError, OSError):
      raise ConfigError(f"data.tokenizer_path={path!r} is invalid: not a SentencePiece .model file") from None
    self.path = path
    self._specials = frozenset((self.bos_id, self.eos_id, self.pad_id))

  @property
  def vocab_size(self) -> int:
    return self._sp.GetPieceSize()

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def pad_id(self) -> int:
    pad = self._sp.pad_id()
    return pad if pad >= 0 else 0

  def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
    return self._sp.EncodeAsIds(text, add_bos=bos, add_eos=eos)

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.DecodeIds([int(i) for i in ids if int(i) not in self._specials])


def get_tokenizer(data: DataConfig) -> ByteTokenizer | SentencePieceTokenizer:
  """The tokenizer that `data.tokenizer` names (a `data.tokenizer_path` model for sentencepiece)."""
  if data.tokenizer == "byte":
    return ByteTokenizer()
  if data.tokenizer == "sentencepiece":
    if not data.tokenizer_path:
      raise ConfigError("data.tokenizer_path='' is invalid: tokenizer=sentencepiece needs the path of a .model file")
    return SentencePieceTokenizer(data.tokenizer_path)
  raise ConfigError(f"data.tokenizer={data.tokenizer!r} is invalid: allowed: byte, sentencepiece")
