"""Byte and SentencePiece tokenizers: round trips, special ids, and config errors."""

import pytest
import sentencepiece as spm

from longjax.config import ConfigError, DataConfig
from longjax.data import ByteTokenizer, SentencePieceTokenizer, get_tokenizer

TEXT = "def héllo():\n    return '世界 🙂'  # naïve\n"


def test_byte_round_trip_non_ascii():
  tokenizer = ByteTokenizer()
  ids = tokenizer.encode(TEXT, bos=True, eos=True)
  assert ids[0] == tokenizer.bos_id == 1 and ids[-1] == tokenizer.eos_id == 2
  assert ids[1:-1] == [b + 3 for b in TEXT.encode("utf-8")]
  assert all(3 <= i < tokenizer.vocab_size == 259 for i in ids[1:-1])
  assert tokenizer.decode(ids) == TEXT
  assert tokenizer.decode([tokenizer.pad_id] + ids + [tokenizer.pad_id] * 3) == TEXT


def test_byte_decode_replaces_broken_utf8_and_drops_out_of_vocab():
  tokenizer = ByteTokenizer()
  ids = tokenizer.encode("é")  # two bytes; keep only the first
  assert tokenizer.decode(ids[:1] + tokenizer.encode("a") + [259, 300]) == "\ufffda"
  assert tokenizer.encode("") == [] and tokenizer.encode("", bos=True) == [1]


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
  """A tiny SentencePiece model trained on the fly, set up as LLaMA's: unk 0, bos 1, eos 2, no pad, byte
  fallback (so newlines survive), no normalization."""
  directory = tmp_path_factory.mktemp("spm")
  corpus = directory / "corpus.txt"
  corpus.write_text((TEXT + "the quick brown fox jumps over the lazy dog\n") * 50 +
                    "".join(f"line {i}: value = {i * i}\n" for i in range(200)), encoding="utf-8")
  spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(directory / "tiny"), vocab_size=320,
                                 character_coverage=1.0, byte_fallback=True, normalization_rule_name="identity",
                                 remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                 minloglevel=2)
  return str(directory / "tiny.model")


def test_sentencepiece_round_trip_and_special_ids(sentencepiece_model):
  tokenizer = get_tokenizer(DataConfig(tokenizer="sentencepiece", tokenizer_path=sentencepiece_model))
  assert isinstance(tokenizer, SentencePieceTokenizer)
  assert (tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id) == (320, 1, 2)
  assert tokenizer.pad_id == 0  # the model has no pad piece
  text = "the lazy fox: value = 49\n" + TEXT
  ids = tokenizer.encode(text, bos=True, eos=True)
  assert ids[0] == 1 and ids[-1] == 2 and 1 not in ids[1:-1] and 2 not in ids[1:-1]
  assert len(ids) < len(text.encode("utf-8"))  # pieces, not bytes
  assert tokenizer.decode(ids) == text
  assert tokenizer.encode(text) == ids[1:-1]


def test_sentencepiece_model_with_pad_piece(tmp_path, sentencepiece_model):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("abc def ghi\n" * 20, encoding="utf-8")
  spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "pad"), vocab_size=14,
                                 pad_id=3, minloglevel=2)
  tokenizer = SentencePieceTokenizer(str(tmp_path / "pad.model"))
  assert tokenizer.pad_id == 3
  assert tokenizer.decode([3] + tokenizer.encode("abc def") + [3, 3]) == "abc def"


@pytest.mark.parametrize("name, data", [("missing.model", None), ("", None), ("bad.model", b"not a model")])
def test_bad_tokenizer_path_is_a_one_line_config_error(tmp_path, name, data):
  path = str(tmp_path / name)  # a missing file, a directory, a file that is no model
  if data is not None:
    (tmp_path / name).write_bytes(data)
  with pytest.raises(ConfigError) as error:
    get_tokenizer(DataConfig(tokenizer="sentencepiece", tokenizer_path=path))
  message = str(error.value)
  assert message.startswith(f"data.tokenizer_path={path!r} is invalid") and "\n" not in message
  assert error.value.__cause__ is None and error.value.__suppress_context__


def test_get_tokenizer_default_is_bytes():
  assert isinstance(get_tokenizer(DataConfig()), ByteTokenizer)
