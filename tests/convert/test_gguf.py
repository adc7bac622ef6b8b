"""`python -m longjax.convert --gguf`: a tiny random llama GGUF (F32, F16, Q8_0, Q4_0, Q4_1 tensors, a byte-level
BPE vocabulary with merges) imports with the logits of its dequantized weights (through `hf.load`, and through
transformers' own GGUF loader) and the tokenizer transformers builds from it; a broken file is one line, exit 2."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm
import torch
import transformers
from safetensors.numpy import save_file

import longjax
from gguf_reference import SPECIALS, byte_level_vocab, write_gguf
from hf_reference import hf_logits, tiny_hf_llama
from longjax.convert import gguf as gguf_import
from longjax.convert import hf
from longjax.nn import Llama

MIXED_TEXT = ("Hello world! The year 2024 had 365 days; pi is 3.14159.\n\n  def f(x):\treturn x**2  # caf\u00e9 "
              "na\u00efve \u65e5\u672c\u8a9e \U0001F600 <|im_start|>user\nIt's <|im_end|> what we'll do  ")


def _convert(*args) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "longjax.convert", *map(str, args)], capture_output=True, text=True,
                        env=env, timeout=300)


def _assert_one_line(proc, *fragments):
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
  assert all(f in lines[0] for f in fragments), lines[0]


@pytest.fixture(scope="module")
def vocab():
  return byte_level_vocab()


def _tiny(directory, vocab, *, tie=False, **kwargs):
  """(path of a tiny GGUF in `directory`, the transformers model it was written from, its dequantized weights)."""
  tokens, merges = vocab
  model = tiny_hf_llama(directory / "hf", vocab_size=len(tokens), hidden_size=64, intermediate_size=160,
                        num_heads=4, num_kv_heads=2, tie=tie)
  path = directory / "tiny.gguf"
  return path, model, write_gguf(path, model, tokens, merges, **kwargs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, vocab):
  return _tiny(tmp_path_factory.mktemp("gguf"), vocab)


def _tokens(vocab_size, length=29):
  return np.random.default_rng(3).integers(0, vocab_size, (2, length)).astype(np.int32)


def _dequantized_hf_dir(directory, model, weights):
  """A transformers directory holding exactly the dequantized weights of the GGUF."""
  directory.mkdir()
  save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(directory / hf.SAFETENSORS))
  model.config.save_pretrained(directory)
  return directory


def test_import_has_the_logits_of_the_dequantized_weights(tiny, tmp_path):
  path, model, weights = tiny
  config, params = gguf_import.load(str(path))
  assert (config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads) == (2, 64, 4, 2)
  assert config.max_position_embeddings == 256 and not config.tie_embeddings
  reference_config, reference_params = hf.load(str(_dequantized_hf_dir(tmp_path / "dequantized", model, weights)))
  assert config == reference_config
  tokens = _tokens(config.vocab_size)
  ours = np.asarray(Llama(config).apply({"params": params}, tokens))
  reference = np.asarray(Llama(config).apply({"params": reference_params}, tokens))
  np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)
  assert np.abs(ours - hf_logits(model, tokens)).max() > 1e-4  # quantized: not the unquantized model's logits


def test_import_matches_transformers_gguf_loader(tiny):
  path, _, _ = tiny
  config, params = gguf_import.load(str(path))
  reference = transformers.LlamaForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                            dtype=torch.float32).eval()
  tokens = _tokens(config.vocab_size)
  np.testing.assert_allclose(np.asarray(Llama(config).apply({"params": params}, tokens)),
                             hf_logits(reference, tokens), atol=1e-4, rtol=0)


def test_tied_model_without_output_tensor(tmp_path, vocab):
  path, model, _ = _tiny(tmp_path, vocab, tie=True)
  config, params = gguf_import.load(str(path), scan_layers=True)
  assert config.tie_embeddings and "lm_head" not in params and "layers" in params
  reference = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name,
                                                            dtype=torch.float32).eval()
  tokens = _tokens(config.vocab_size)
  np.testing.assert_allclose(np.asarray(Llama(config).apply({"params": params}, tokens)),
                             hf_logits(reference, tokens), atol=1e-4, rtol=0)


def test_cli_import_carries_the_tokenizer_of_transformers(tiny, tmp_path):
  path, _, _ = tiny
  proc = _convert("--gguf", path, "--out_dir", tmp_path / "out")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "trained length 256" in proc.stdout
  shutil.move(tmp_path / "out", tmp_path / "moved")  # self-contained: the workdir moves with its tokenizer
  loaded = longjax.load(str(tmp_path / "moved"))
  assert loaded.config.data.tokenizer == "hf" and not loaded.config.data.add_bos
  reference = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  tokenizer = loaded.tokenizer
  for text in (MIXED_TEXT, " leading space", "12345678", ""):
    assert tokenizer.encode(text) == reference(text)["input_ids"], text
  ids = tokenizer.encode(MIXED_TEXT)
  assert tokenizer.encode("<|im_start|>") == [SPECIALS.index("<|im_start|>")]  # a control token stays whole
  assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2) and loaded.encode("hi")[0] != 1  # no bos: add_bos_token
  assert tokenizer.decode([i for i in ids if i not in (1, 2)]) == MIXED_TEXT.replace("<|im_start|>", "").replace(
      "<|im_end|>", "")
  np.testing.assert_allclose(np.asarray(loaded.logits(ids[:20]))[0],
                             np.asarray(Llama(loaded.config.model).apply({"params": gguf_import.load(str(path))[1]},
                                                                         np.asarray([ids[:20]])))[0], atol=1e-5)


def test_sentencepiece_vocabulary_becomes_its_tokenizer_model(tmp_path, vocab):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(MIXED_TEXT * 30 + "the quick brown fox jumps over the lazy dog\n" * 30)
  spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=400,
                                 model_type="bpe", byte_fallback=True, minloglevel=2,
                                 normalization_rule_name="identity", remove_extra_whitespaces=False)  # as LLaMA's
  original = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
  model = tiny_hf_llama(tmp_path / "hf", vocab_size=original.GetPieceSize(), hidden_size=64, intermediate_size=160)
  path = tmp_path / "sp.gguf"
  write_gguf(path, model, *vocab, sentencepiece=(tmp_path / "sp.model").read_bytes())
  proc = _convert("--gguf", path, "--out_dir", tmp_path / "out")
  assert proc.returncode == 0, proc.stderr[-3000:]
  loaded = longjax.load(str(tmp_path / "out"))
  assert loaded.config.data.tokenizer == "sentencepiece" and loaded.config.data.add_bos
  reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
  for text in (MIXED_TEXT, "the lazy fox", "  two leading spaces"):
    assert loaded.tokenizer.encode(text) == original.EncodeAsIds(text), text
  for text in (MIXED_TEXT, "the lazy fox"):  # transformers' rebuilt BPE differs from SentencePiece on leading spaces
    assert loaded.encode(text).tolist() == reference(text)["input_ids"], text  # with its bos


@pytest.mark.parametrize("case", ["truncated", "unknown architecture", "unsupported tensor type", "missing file",
                                  "unknown pre-tokenizer"])
def test_bad_gguf_is_one_line_and_exit_2(tiny, tmp_path, vocab, case):
  path, model, _ = tiny
  tokens, merges = vocab
  bad = tmp_path / "bad.gguf"
  if case == "truncated":
    data = path.read_bytes()
    bad.write_bytes(data[:len(data) * 2 // 3])
    fragments = (str(bad), "truncated or corrupt")
  elif case == "unknown architecture":
    write_gguf(bad, model, tokens, merges, architecture="falcon")
    fragments = (str(bad), "general.architecture='falcon'", "allowed: llama")
  elif case == "unsupported tensor type":
    write_gguf(bad, model, tokens, merges, tensor_dtype=np.float64)
    fragments = (str(bad), "output_norm.weight", "type F64", "Q4_1")
  elif case == "missing file":
    fragments = (str(bad), "file not found")
  else:
    write_gguf(bad, model, tokens, merges, pre="made-up")
    fragments = (str(bad), "tokenizer.ggml.pre='made-up'", "smollm")
  _assert_one_line(_convert("--gguf", bad, "--out_dir", tmp_path / "out"), *fragments)
  assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_gguf_and_hf_dir_are_exclusive(tiny, tmp_path):
  _assert_one_line(_convert("--gguf", tiny[0], "--hf_dir", tmp_path, "--out_dir", tmp_path / "out"),
                   "exactly one source")
