"""`python -m longjax.convert` between workdirs and transformers: a (LoRA, scanned) training run exports with its
logits; an imported transformers model is a workdir that `train.init_from` and `longjax.load` read."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import sentencepiece as spm
import tokenizers
import transformers
from flax import traverse_util
from safetensors.numpy import load_file

import longjax
from hf_reference import hf_logits, tiny_hf_llama
from longjax import checkpoint
from longjax.convert import hf, workdir
from longjax.nn import abstract_params
from longjax.train.loop import Trainer
from train.conftest import assert_user_error, read_metrics

TOKENS = np.random.default_rng(0).integers(3, 259, (2, 40)).astype(np.int32)


def _convert(runner, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "longjax.convert", *map(str, args)], env=runner.env,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
  """A random transformers LLaMA with the byte tokenizer's vocabulary and shapes unlike configs/tiny.py's."""
  path = tmp_path_factory.mktemp("hf")
  return path, tiny_hf_llama(path, vocab_size=259, hidden_size=48, intermediate_size=128, num_heads=4,
                             num_kv_heads=4)


@pytest.fixture(scope="module")
def imported(runner, hf_model, tmp_path_factory):
  out = tmp_path_factory.mktemp("imported") / "workdir"
  proc = _convert(runner, "--hf_dir", hf_model[0], "--out_dir", out)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return str(out)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_lora_run_exports_to_transformers_with_its_logits(runner, tmp_path, scan_layers):
  run, out = tmp_path / "run", tmp_path / "hf"
  runner.train(run, {"model.lora.rank": 4, "model.scan_layers": scan_layers, "train.num_steps": 3,
                     "train.learning_rate": 1e-2, "train.warmup_steps": 0, "train.checkpoint_every": 2})
  proc = _convert(runner, "--workdir", run, "--to_hf", out)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "step 3" in proc.stdout

  loaded = longjax.load(str(run))
  flat = traverse_util.flatten_dict(jax.device_get(loaded.params), sep="/")
  assert all(np.abs(v).max() > 0 for k, v in flat.items() if k.endswith("lora_b")), "LoRA did not train"
  model = transformers.LlamaForCausalLM.from_pretrained(out).eval()
  assert not any("lora" in name for name, _ in model.named_parameters())
  np.testing.assert_allclose(hf_logits(model, TOKENS), np.asarray(loaded.logits(TOKENS)), atol=1e-4, rtol=0)


def test_import_loads_with_the_transformers_logits(imported, hf_model):
  loaded = longjax.load(imported)
  assert loaded.step == 0 and loaded.config.model.hidden_size == 48
  assert checkpoint.read_config(imported) == loaded.config
  np.testing.assert_allclose(np.asarray(loaded.logits(TOKENS)), hf_logits(hf_model[1], TOKENS), atol=1e-4, rtol=0)
  checkpointer = checkpoint.Checkpointer(imported, read_only=True)
  try:  # parameters without optimizer state: a run cannot resume in it (train.init_from starts one from it)
    with pytest.raises(checkpoint.CheckpointError, match="parameters only"):
      checkpointer.restore(abstract_params(loaded.config.model)[0], None)
  finally:
    checkpointer.close()


def test_import_takes_the_sentencepiece_tokenizer(hf_model, tmp_path):
  source = tmp_path / "hf"
  shutil.copytree(hf_model[0], source)
  (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 20)
  spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(source / "tokenizer"),
                                 vocab_size=31, minloglevel=2)
  config = workdir.import_hf(str(source), str(tmp_path / "out"))
  assert (config.data.tokenizer, config.data.tokenizer_path) == ("sentencepiece", workdir.SENTENCEPIECE_MODEL)
  shutil.move(tmp_path / "out", tmp_path / "moved")  # the tokenizer is the workdir's own: it moves with it
  assert checkpoint.read_config(str(tmp_path / "moved")).data.tokenizer_path == str(
      tmp_path / "moved" / workdir.SENTENCEPIECE_MODEL)
  assert longjax.load(str(tmp_path / "moved")).encode("the lazy fox")[0] == 1  # bos


def test_import_takes_the_tokenizer_json(hf_model, tmp_path):
  source = tmp_path / "hf"
  shutil.copytree(hf_model[0], source)
  tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = tokenizers.trainers.BpeTrainer(vocab_size=259, special_tokens=["<|endoftext|>", "<|im_start|>"],
                                           initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(["the quick brown fox jumps over the lazy dog\n"] * 20, trainer)
  tokenizer.save(str(source / hf.TOKENIZER_JSON))
  (source / hf.TOKENIZER_CONFIG).write_text(json.dumps(
      {"bos_token": "<|im_start|>", "eos_token": "<|endoftext|>", "add_bos_token": False}))
  (source / workdir.SENTENCEPIECE_MODEL).write_bytes(b"not read: tokenizer.json comes first, as in transformers")
  config = workdir.import_hf(str(source), str(tmp_path / "out"))
  assert (config.data.tokenizer, config.data.tokenizer_path, config.data.add_bos) == ("hf", "tokenizer.json", False)
  loaded = longjax.load(str(tmp_path / "out"))
  assert (loaded.tokenizer.bos_id, loaded.tokenizer.eos_id) == (1, 0)
  text = "the lazy dog, the quick fox"
  assert loaded.encode(text).tolist() == tokenizer.encode(text).ids


def test_import_initialises_training(runner, imported, hf_model, tmp_path):
  config = runner.config({"train.init_from": imported})
  trainer = Trainer(config, str(tmp_path / "first_step"))
  try:
    with trainer.context():
      first = np.asarray(jax.jit(trainer.model.apply)({"params": trainer.initial_params()}, TOKENS))
  finally:
    trainer.checkpointer.close()
  np.testing.assert_allclose(first, hf_logits(hf_model[1], TOKENS), atol=1e-4, rtol=0)

  run = tmp_path / "run"
  runner.train(run, {"train.init_from": imported, "train.num_steps": 2})
  assert all(np.isfinite(m["loss"]) for m in read_metrics(run))
  assert json.loads((run / "config.json").read_text())["model"]["hidden_size"] == 48


def test_export_of_a_directory_without_checkpoints_is_one_line(runner, imported, tmp_path):
  assert_user_error(_convert(runner, "--workdir", tmp_path, "--to_hf", tmp_path / "hf"), "config.json")
  shutil.copy(os.path.join(imported, "config.json"), tmp_path)
  assert_user_error(_convert(runner, "--workdir", tmp_path, "--to_hf", tmp_path / "hf"), "no checkpoint")
  assert not (tmp_path / "hf").exists()


def test_import_exports_back_exactly_and_nothing_is_written_over(runner, imported, hf_model, tmp_path):
  out = tmp_path / "hf"
  proc = _convert(runner, "--workdir", imported, "--to_hf", out)
  assert proc.returncode == 0, proc.stderr[-4000:]
  before, after = load_file(str(hf_model[0] / hf.SAFETENSORS)), load_file(str(out / hf.SAFETENSORS))
  assert sorted(before) == sorted(after) and all((before[k] == after[k]).all() for k in before)

  written = {path: sorted(os.listdir(path)) for path in (imported, out)}
  assert_user_error(_convert(runner, "--hf_dir", hf_model[0], "--out_dir", imported), "--out_dir", "not empty")
  assert_user_error(_convert(runner, "--workdir", imported, "--to_hf", out), "--to_hf", "not empty")
  assert {path: sorted(os.listdir(path)) for path in written} == written
  assert_user_error(_convert(runner, "--hf_dir", hf_model[0], "--to_hf", tmp_path / "x"), "--out_dir")
