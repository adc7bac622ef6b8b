"""Byte, SentencePiece and Hugging Face tokenizers: round trips, special ids, and config errors."""

import json
import shutil

import pytest
import sentencepiece as spm
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from longjax.config import TOKENIZERS, ConfigError, DataConfig
from longjax.data import ByteTokenizer, HuggingFaceTokenizer, SentencePieceTokenizer, get_tokenizer
from longjax.data.tokenizer import REGISTRY

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


def test_registry_and_allowed_config_values_agree():
  assert set(REGISTRY) == set(TOKENIZERS)
  with pytest.raises(ConfigError, match=r"data\.tokenizer='tiktoken' is invalid: allowed: byte, sentencepiece, hf"):
    DataConfig(tokenizer="tiktoken").validate()
  with pytest.raises(ConfigError, match=r"data\.tokenizer_path='' is invalid: tokenizer=hf needs the path of a "
                     r"tokenizer\.json"):
    DataConfig(tokenizer="hf").validate()


LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>"]


def _train_bpe(directory, special_tokens, vocab_size=400):
  """A byte-level BPE trained on the fly and saved as directory/tokenizer.json, set up as Llama 3's: its
  post-processor adds <|begin_of_text|> (which encode must not apply on its own)."""
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  corpus = [TEXT, "the quick brown fox jumps over the lazy dog\n"] * 50 + [f"line {i}: value = {i * i}\n"
                                                                         for i in range(200)]
  tokenizer.train_from_iterator(corpus, trainer)
  bos = special_tokens[0]
  tokenizer.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[
      (bos, tokenizer.token_to_id(bos))])
  directory.mkdir(parents=True, exist_ok=True)
  tokenizer.save(str(directory / "tokenizer.json"))
  return directory


@pytest.fixture(scope="module")
def llama3_style(tmp_path_factory):
  """A directory with only a tokenizer.json whose specials are Llama 3's (no tokenizer_config.json)."""
  return _train_bpe(tmp_path_factory.mktemp("hf") / "llama3", LLAMA3_SPECIALS)


@pytest.mark.parametrize("file", [False, True], ids=["directory", "tokenizer.json"])
def test_hf_round_trip_and_special_ids_found_by_name(llama3_style, file):
  path = str(llama3_style / "tokenizer.json") if file else str(llama3_style)
  tokenizer = get_tokenizer(DataConfig(tokenizer="hf", tokenizer_path=path))
  assert isinstance(tokenizer, HuggingFaceTokenizer)
  assert tokenizer.vocab_size == 400
  assert (tokenizer.bos_id, tokenizer.eos_id) == (0, 1)  # <|begin_of_text|>, <|end_of_text|>
  assert tokenizer.pad_id == tokenizer.eos_id  # Llama 3 defines no pad token
  text = "the lazy fox: value = 49\n" + TEXT
  ids = tokenizer.encode(text, bos=True, eos=True)
  assert ids[0] == 0 and ids[-1] == 1 and not {0, 1, 2} & set(ids[1:-1])
  assert len(ids) < len(text.encode("utf-8"))  # merges, not bytes
  assert tokenizer.encode(text) == ids[1:-1]  # the file's post-processor adds no <|begin_of_text|>
  assert tokenizer.decode(ids) == text
  assert tokenizer.decode(ids + [tokenizer.pad_id] * 3 + [400, 10**6]) == text  # padding, a padded model vocab
  assert tokenizer.encode("") == [] and tokenizer.encode("", bos=True, eos=True) == [0, 1]


def test_hf_special_ids_from_tokenizer_config(tmp_path):
  directory = _train_bpe(tmp_path / "mistral", ["<s>", "</s>", "<unk>", "<pad>", *LLAMA3_SPECIALS])
  (directory / "tokenizer_config.json").write_text(json.dumps({
      "bos_token": "<|begin_of_text|>",  # the config wins over the names <s>, </s>, <pad>
      "eos_token": {"content": "<|reserved_special_token_0|>", "special": True},  # AddedToken form
      "pad_token": None,
  }))
  tokenizer = HuggingFaceTokenizer(str(directory))
  assert (tokenizer.bos_id, tokenizer.eos_id) == (4, 6)
  assert tokenizer.pad_id == 3  # no pad in the config: a <pad> token of the vocabulary
  (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<none>"}))
  with pytest.raises(ConfigError, match=r"no eos token \('<none>'\) in its vocabulary"):
    HuggingFaceTokenizer(str(directory))


def test_hf_tokenizer_without_recognisable_specials_asks_for_a_config(tmp_path):
  directory = _train_bpe(tmp_path / "plain", ["<start>"])
  with pytest.raises(ConfigError, match=r"no bos token \(any of <\|begin_of_text\|>.*bos_token in a "
                     r"tokenizer_config\.json"):
    HuggingFaceTokenizer(str(directory))


@pytest.mark.parametrize("case", ["missing file", "directory without tokenizer.json", "not a tokenizer",
                                  "bad tokenizer_config.json"])
def test_bad_hf_tokenizer_path_is_a_one_line_config_error(tmp_path, llama3_style, case):
  if case == "missing file":
    path = expected = str(tmp_path / "missing" / "tokenizer.json")
  elif case == "directory without tokenizer.json":
    path, expected = str(tmp_path), str(tmp_path / "tokenizer.json")
  elif case == "not a tokenizer":
    (tmp_path / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    path = expected = str(tmp_path / "tokenizer.json")
  else:
    shutil.copy(llama3_style / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text("{")
    path, expected = str(tmp_path), str(tmp_path / "tokenizer_config.json")
  with pytest.raises(ConfigError) as error:
    get_tokenizer(DataConfig(tokenizer="hf", tokenizer_path=path))
  message = str(error.value)
  assert f"={expected!r} is invalid" in message and "\n" not in message


MIXED_TEXT = ("Hello world! 2024 had 365 days; pi = 3.14159.\n\n  def f(x):\treturn x**2  # caf\u00e9 na\u00efve "
              "\u65e5\u672c\u8a9e \U0001F600 <|begin_of_text|> it's <|end_of_text|>  trailing  ")


def test_hf_tokenizer_encodes_exactly_as_the_tokenizers_library(llama3_style):
  ours = HuggingFaceTokenizer(str(llama3_style))
  reference = tokenizers.Tokenizer.from_file(str(llama3_style / "tokenizer.json"))
  for text in (MIXED_TEXT, TEXT, " x", ""):
    assert ours.encode(text) == reference.encode(text, add_special_tokens=False).ids, text
  assert ours.encode(MIXED_TEXT, bos=True) == reference.encode(MIXED_TEXT).ids  # its post-processor's bos


def test_hf_tokenizer_adds_bos_as_the_model_does(tmp_path, llama3_style):
  assert HuggingFaceTokenizer(str(llama3_style)).adds_bos  # the post-processor puts <|begin_of_text|> first
  directory = _train_bpe(tmp_path / "smollm", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
  (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                                                               "add_bos_token": False}))
  assert not HuggingFaceTokenizer(str(directory)).adds_bos  # tokenizer_config.json wins
