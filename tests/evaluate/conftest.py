"""Evaluation mains run on the training tests' shared trained workdir (built once per test run); tiny tokenizers
of the three kinds longjax reads (bytes, SentencePiece, tokenizer.json), trained here on the shipped prose."""

import json

import pytest

from longjax.data.tokenizer import ByteTokenizer, HuggingFaceTokenizer, SentencePieceTokenizer
from longjax.evaluate.corpus import essays
from train.conftest import runner, trained_workdir  # noqa: F401 - fixtures, shared through file locks


def _training_text() -> list[str]:
  lines = essays().split("\n")[:60]  # about 45K characters of prose
  return lines + [" ".join(str(n) for n in range(i, 2000, 7)) for i in range(7)]  # numbers, for digit merges


def _sentencepiece(directory) -> SentencePieceTokenizer:
  """LLaMA-like: BPE pieces, digits split, a dummy prefix, whitespace kept, byte fallback; unk 0, bos 1, eos 2."""
  import sentencepiece

  prefix = str(directory / "sp")
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(_training_text()), model_prefix=prefix, vocab_size=600, model_type="bpe",
      split_digits=True, byte_fallback=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
      normalization_rule_name="identity", character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
      minloglevel=2)
  return SentencePieceTokenizer(prefix + ".model")


def _tokenizer_json(directory) -> HuggingFaceTokenizer:
  """GPT-2-like byte-level BPE that merges digits, with <s> and </s> named in tokenizer_config.json."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<pad>", "<s>", "</s>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tokenizer.train_from_iterator(_training_text(), trainer)
  tokenizer.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                               "pad_token": "<pad>"}))
  return HuggingFaceTokenizer(str(directory))


@pytest.fixture(scope="session")
def tokenizers(tmp_path_factory) -> dict:
  """name -> tokenizer: byte, sentencepiece (digit-splitting), tokenizer.json (digit-merging BPE)."""
  return {"byte": ByteTokenizer(), "sentencepiece": _sentencepiece(tmp_path_factory.mktemp("sp")),
          "tokenizer.json": _tokenizer_json(tmp_path_factory.mktemp("bpe"))}
