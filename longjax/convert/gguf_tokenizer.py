"""The tokenizer a GGUF file describes (`tokenizer.ggml.*`), written as files that longjax's tokenizers read.

`tokenizer.ggml.model` "gpt2" (byte-level BPE: tokens, merges, `tokenizer.ggml.pre`) becomes a `tokenizers`
BPE `tokenizer.json` plus a `tokenizer_config.json` naming bos/eos/pad (read by `data.HuggingFaceTokenizer`),
built as transformers' GGUF converter builds it (`integrations/gguf/gguf_tokenizer_mapping.py`), with the
pre-tokenizer llama.cpp applies for that `pre` (llama-vocab.cpp). "llama" (SentencePiece: tokens, scores,
token types) becomes the SentencePiece `tokenizer.model` the file was converted from. Whether to add BOS is
`tokenizer.ggml.add_bos_token` (absent: llama.cpp's default, yes for SentencePiece, no for BPE).
"""

from __future__ import annotations

import json
import os

import gguf
import tokenizers
from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from longjax.config import DataConfig
from longjax.convert.gguf import value
from longjax.convert.hf import SENTENCEPIECE_MODEL, TOKENIZER_CONFIG, TOKENIZER_JSON, ConversionError
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's token types (the same numbers as SentencePiece's piece types)

# llama.cpp's LLAMA_VOCAB_PRE_TYPE regexes (llama-vocab.cpp), applied before the byte-level mapping.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> (regexes applied in turn, ignore_merges: a word already in the vocabulary stays whole).
PRE_TOKENIZERS = {
    "default": ((_GPT2,), False), "gpt2": ((_GPT2,), False),
    "smollm": ((r"\p{N}", _GPT2), False), "starcoder": ((r"\p{N}", _GPT2), False),
    "llama-bpe": ((_LLAMA3,), True), "llama3": ((_LLAMA3,), True), "llama-v3": ((_LLAMA3,), True),
}


def _byte_level(reader: gguf.GGUFReader, path: str) -> tokenizers.Tokenizer:
  pre = value(reader, "tokenizer.ggml.pre", "default")
  if pre not in PRE_TOKENIZERS:
    raise ConversionError(f"{path}: tokenizer.ggml.pre={pre!r} is not supported; allowed: "
                          f"{', '.join(PRE_TOKENIZERS)}")
  splits, ignore_merges = PRE_TOKENIZERS[pre]
  to_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  alphabet = set(pre_tokenizers.ByteLevel.alphabet())
  tokens = value(reader, "tokenizer.ggml.tokens")
  # A token spelled outside the byte alphabet (some converters write raw UTF-8) is respelled in it.
  vocab = {token if set(token) <= alphabet else to_bytes.pre_tokenize_str(token)[0][0]: i
           for i, token in enumerate(tokens)}
  merges = [tuple(merge.split(" ", 1)) for merge in value(reader, "tokenizer.ggml.merges", [])]
  tokenizer = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=ignore_merges))
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
      [pre_tokenizers.Split(Regex(split), behavior="isolated") for split in splits] + [to_bytes])
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
  types = value(reader, "tokenizer.ggml.token_type", [])
  # Control tokens (<|endoftext|>) and user-defined ones (<think>) are matched whole, as llama.cpp matches them.
  tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                for token, kind in zip(tokens, types) if kind == _CONTROL and token in vocab])
  tokenizer.add_tokens([AddedToken(token, special=False, normalized=False)
                        for token, kind in zip(tokens, types) if kind == _USER_DEFINED and token in vocab])
  return tokenizer


def _sentencepiece(reader: gguf.GGUFReader, path: str) -> bytes:
  """The serialized SentencePiece BPE model of the file's pieces, scores and types."""
  tokens = value(reader, "tokenizer.ggml.tokens")
  scores = value(reader, "tokenizer.ggml.scores")
  types = value(reader, "tokenizer.ggml.token_type")
  if scores is None or types is None:
    raise ConversionError(f"{path}: tokenizer.ggml.scores / token_type are missing; a SentencePiece ('llama') "
                          "vocabulary needs both")
  proto = sentencepiece_model_pb2.ModelProto()
  proto.trainer_spec.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
  proto.trainer_spec.byte_fallback = 6 in types  # BYTE pieces <0x00>..<0xFF>
  for name, key in (("unk_id", "unknown_token_id"), ("bos_id", "bos_token_id"), ("eos_id", "eos_token_id"),
                    ("pad_id", "padding_token_id")):
    setattr(proto.trainer_spec, name, value(reader, f"tokenizer.ggml.{key}", -1))
  proto.normalizer_spec.name = "identity"
  proto.normalizer_spec.add_dummy_prefix = bool(value(reader, "tokenizer.ggml.add_space_prefix", True))
  proto.normalizer_spec.remove_extra_whitespaces = False
  proto.normalizer_spec.escape_whitespaces = True
  for token, score, kind in zip(tokens, scores, types):
    proto.pieces.add(piece=token, score=score, type=kind)
  return proto.SerializeToString()


def write_tokenizer(reader: gguf.GGUFReader, path: str, out_dir: str) -> DataConfig:
  """Write the file's tokenizer into `out_dir`; the DataConfig that reads it (tokenizer_path relative to `out_dir`)."""
  kind = value(reader, "tokenizer.ggml.model")
  if kind not in ("gpt2", "llama") or not value(reader, "tokenizer.ggml.tokens"):
    raise ConversionError(f"{path}: tokenizer.ggml.model={kind!r} (with tokenizer.ggml.tokens) is not supported; "
                          "allowed: gpt2 (byte-level BPE), llama (SentencePiece)")
  add_bos = bool(value(reader, "tokenizer.ggml.add_bos_token", kind == "llama"))
  if kind == "llama":
    with open(os.path.join(out_dir, SENTENCEPIECE_MODEL), "wb") as f:
      f.write(_sentencepiece(reader, path))
    return DataConfig(tokenizer="sentencepiece", tokenizer_path=SENTENCEPIECE_MODEL, add_bos=add_bos)
  _byte_level(reader, path).save(os.path.join(out_dir, TOKENIZER_JSON))
  tokens = value(reader, "tokenizer.ggml.tokens")
  special = {"add_bos_token": add_bos}
  for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("pad_token", "padding_token_id")):
    token_id = value(reader, f"tokenizer.ggml.{key}")
    if token_id is not None:
      special[name] = tokens[token_id]
  with open(os.path.join(out_dir, TOKENIZER_CONFIG), "w") as f:
    json.dump(special, f, indent=2)
  return DataConfig(tokenizer="hf", tokenizer_path=TOKENIZER_JSON, add_bos=add_bos)
