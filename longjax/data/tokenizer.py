"""Tokenizers behind one interface: byte-level (the embedded default), SentencePiece (Llama 1/2) and
Hugging Face `tokenizer.json` (Llama 3 and most models on the Hub).

Each exposes `vocab_size`, `bos_id`, `eos_id`, `pad_id`, `encode(text, *, bos, eos) -> list[int]` and
`decode(ids) -> str`. `decode` reads every id it is given and drops the special ones (pad, bos, eos).
"""

from __future__ import annotations

import json
from typing import Callable, Iterable, Protocol

from etils import epath
import numpy as np
import sentencepiece as spm
import tokenizers

from longjax.config import TOKENIZER_FILES, TOKENIZERS, ConfigError, DataConfig


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


def _read_text(path: epath.Path, key: str) -> str:
  try:
    return path.read_text()
  except (OSError, ValueError) as e:
    raise ConfigError(f"{key}={str(path)!r} is invalid: cannot read it ({type(e).__name__})") from None


def _token_content(token) -> str | None:
  """tokenizer_config.json writes a special token as "<s>" or as {"content": "<s>", ...} (an AddedToken)."""
  return token.get("content") if isinstance(token, dict) else token


class HuggingFaceTokenizer:
  """A Hugging Face `tokenizer.json`, read by the `tokenizers` library (Llama 3: 128,256 ids).

  `path` is the tokenizer.json file or the directory holding it. bos, eos and pad are the `bos_token`,
  `eos_token` and `pad_token` of the tokenizer_config.json beside it when it has them; otherwise the first
  of `BOS_TOKENS` / `EOS_TOKENS` that the file defines (Llama 3: <|begin_of_text|>, <|end_of_text|>; Llama 2
  and Mistral: <s>, </s>). Without a pad token `pad_id` is `eos_id` (Llama 3 defines none): decode drops
  both, and padded positions never enter the loss. `encode` adds no special tokens of its own (the file's
  post-processor, e.g. Llama 3's automatic <|begin_of_text|>, is not applied); bos and eos come only from
  its arguments. `decode` drops bos, eos, pad and ids past the vocabulary (a padded model vocabulary).
  """

  BOS_TOKENS = ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", "<|endoftext|>")
  EOS_TOKENS = ("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>")
  PAD_TOKENS = ("<pad>", "<|pad|>", "[PAD]")

  def __init__(self, path: str):
    file = epath.Path(path)
    if file.is_dir():
      file = file / "tokenizer.json"
    key = "data.tokenizer_path"
    text = _read_text(file, key)
    try:
      self._tokenizer = tokenizers.Tokenizer.from_str(text)
    except Exception:  # the library raises a bare Exception on malformed files
      raise ConfigError(f"{key}={str(file)!r} is invalid: not a Hugging Face tokenizer.json") from None
    self.path = str(file)
    special = self._special_tokens(file.parent / "tokenizer_config.json")
    self._add_bos_token = special.get("add_bos_token")
    self._bos_id = self._find("bos", special.get("bos_token"), self.BOS_TOKENS)
    self._eos_id = self._find("eos", special.get("eos_token"), self.EOS_TOKENS)
    pad = special.get("pad_token")
    has_pad = pad is not None or any(self._tokenizer.token_to_id(t) is not None for t in self.PAD_TOKENS)
    self._pad_id = self._find("pad", pad, self.PAD_TOKENS) if has_pad else self._eos_id
    self._specials = frozenset((self._bos_id, self._eos_id, self._pad_id))

  @staticmethod
  def _special_tokens(config_path: epath.Path) -> dict[str, str | bool | None]:
    if not config_path.exists():
      return {}
    try:
      config = json.loads(_read_text(config_path, "tokenizer_config.json"))
    except json.JSONDecodeError as e:
      raise ConfigError(f"tokenizer_config.json={str(config_path)!r} is invalid: not JSON ({e.msg})") from None
    if not isinstance(config, dict):
      raise ConfigError(f"tokenizer_config.json={str(config_path)!r} is invalid: not a JSON object")
    tokens = {name: _token_content(config.get(name)) for name in ("bos_token", "eos_token", "pad_token")}
    return {**tokens, "add_bos_token": config.get("add_bos_token")}

  def _find(self, role: str, configured: str | None, candidates: tuple[str, ...]) -> int:
    """The id of the configured token, else of the first candidate the vocabulary has."""
    for token in (configured,) if configured is not None else candidates:
      token_id = self._tokenizer.token_to_id(token)
      if token_id is not None:
        return token_id
    wanted = repr(configured) if configured is not None else f"any of {', '.join(candidates)}"
    raise ConfigError(f"data.tokenizer_path={self.path!r} is invalid: no {role} token ({wanted}) in its vocabulary; "
                      f"name it as {role}_token in a tokenizer_config.json beside it")

  @property
  def vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size(with_added_tokens=True)

  @property
  def adds_bos(self) -> bool:
    """Whether the model's own tokenizer starts a text with bos (what data.add_bos should be): tokenizer_config.json's
    add_bos_token, else whether the file's post-processor puts bos first (Llama 3's does)."""
    if self._add_bos_token is not None:
      return bool(self._add_bos_token)
    ids = self._tokenizer.encode("a", add_special_tokens=True).ids
    return bool(ids) and ids[0] == self._bos_id

  @property
  def bos_id(self) -> int:
    return self._bos_id

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def pad_id(self) -> int:
    return self._pad_id

  def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
    ids = self._tokenizer.encode(text, add_special_tokens=False).ids
    return [self.bos_id] * bos + ids + [self.eos_id] * eos

  def decode(self, ids: Iterable[int]) -> str:
    kept = [int(i) for i in ids if int(i) not in self._specials and 0 <= int(i) < self.vocab_size]
    return self._tokenizer.decode(kept, skip_special_tokens=False)


def _byte(path: str) -> ByteTokenizer:
  del path  # bytes need no file
  return ByteTokenizer()


# data.tokenizer -> constructor taking data.tokenizer_path; its keys are config.TOKENIZERS (a test keeps them equal).
REGISTRY: dict[str, Callable[[str], Tokenizer]] = {
    "byte": _byte,
    "sentencepiece": SentencePieceTokenizer,
    "hf": HuggingFaceTokenizer,
}


def get_tokenizer(data: DataConfig) -> Tokenizer:
  """The tokenizer that `data.tokenizer` names, reading `data.tokenizer_path` (sentencepiece, hf)."""
  if data.tokenizer not in REGISTRY:
    raise ConfigError(f"data.tokenizer={data.tokenizer!r} is invalid: allowed: {', '.join(TOKENIZERS)}")
  if data.tokenizer in TOKENIZER_FILES and not data.tokenizer_path:
    raise ConfigError(f"data.tokenizer_path='' is invalid: tokenizer={data.tokenizer} needs "
                      f"{TOKENIZER_FILES[data.tokenizer]}")
  return REGISTRY[data.tokenizer](data.tokenizer_path)
