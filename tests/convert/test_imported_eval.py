"""An imported model under overrides and on text files: a config applied to it (evaluate --config, train.init_from)
changes only the keys it sets, evaluation reads the trained length from the model, and `--text` evaluates files."""

import json
import os
import subprocess
import sys

import pytest

from gguf_reference import byte_level_vocab, write_gguf
from hf_reference import tiny_hf_llama
from longjax import checkpoint
from longjax.config import ConfigError, load_file, merge_onto
from longjax.evaluate.tasks import EvalRun
from longjax.train.init import run_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = os.path.join(REPO, "configs", "base.py")
THETA = 100000.0  # SmolLM2's, not configs/base.py's 10000


def _run(module, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, env=env,
                        cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """A workdir imported through the CLI from a tiny GGUF (rope_theta 100000, trained length 256)."""
  directory = tmp_path_factory.mktemp("gguf")
  tokens, merges = byte_level_vocab()
  model = tiny_hf_llama(directory / "hf", vocab_size=len(tokens), hidden_size=64, intermediate_size=160,
                        num_heads=4, num_kv_heads=2, rope_parameters={"rope_theta": THETA})
  write_gguf(directory / "tiny.gguf", model, tokens, merges, context_length=256)
  proc = _run("longjax.convert", "--gguf", directory / "tiny.gguf", "--out_dir", directory / "workdir")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return str(directory / "workdir")


def test_override_keeps_the_rope_keys_it_does_not_set(imported):
  trained = checkpoint.read_config(imported)
  assert trained.model.rope.rope_theta == THETA and trained.model.max_position_embeddings == 256
  assert EvalRun(trained, {"default": trained}).trained_length == 256  # the model's, not train.seq_len
  override = load_file(BASE)
  override.model.rope.rope_type, override.model.rope.factor = "yarn", 2.0
  override.model.rope.rope_theta = 10000.0  # base.py's default: a file leaving it there does not set it
  override.model.attention.impl = "xla"
  merged = merge_onto(trained, override, ("model.rope", "model.attention"))
  rope = merged.model.rope
  assert (rope.rope_type, rope.factor, rope.rope_theta) == ("yarn", 2.0, THETA)
  assert rope.original_max_position_embeddings == 256  # L: the trained length
  assert merged.model.attention.impl == "xla" and merged.model.hidden_size == 64 and merged.data == trained.data
  explicit = merge_onto(trained, override, ("model.rope",), explicit=["model.rope.rope_theta"])
  assert explicit.model.rope.rope_theta == 10000.0  # a --config.KEY flag sets it even at the default
  override.model.rope.original_max_position_embeddings = 128
  assert merge_onto(trained, override, ("model.rope",)).model.rope.original_max_position_embeddings == 128
  override.model.rope.factor = 0.5
  with pytest.raises(ConfigError, match="model.rope.factor=0.5"):
    merge_onto(trained, override, ("model.rope",))


def test_fine_tune_from_an_import_keeps_its_rope_and_tokenizer(imported):
  given = load_file(os.path.join(REPO, "configs", "tiny.py") + ":rope=yarn")
  given.train.init_from = imported
  config = run_config(given)
  assert config.model.rope.rope_theta == THETA and config.model.rope.rope_type == "yarn"
  assert (config.data.tokenizer, config.data.tokenizer_path, config.data.add_bos) == (
      "hf", os.path.join(imported, "tokenizer.json"), False)
  assert config.model.rope.original_max_position_embeddings == 128  # tiny.py sets L itself
  given.model.rope.original_max_position_embeddings = None
  assert run_config(given).model.rope.original_max_position_embeddings == 256  # else the source's trained length
  assert run_config(given, explicit=["model.rope.rope_theta"]).model.rope.rope_theta == 10000.0


def test_evaluate_an_import_on_text_files_with_a_rope_override(imported, tmp_path):
  texts = tmp_path / "texts"
  texts.mkdir()
  for i in range(3):
    (texts / f"doc{i}.txt").write_text(f"Document {i}. " + "The quick brown fox jumps over the lazy dog. " * 30)
  proc = _run("longjax.evaluate", "--workdir", imported, "--task", "perplexity", "--text", texts,
              "--lengths", "32,64", "--config", BASE, "--config.model.rope.rope_type=yarn",
              "--config.model.rope.factor=2", "--name", "yarn2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(os.path.join(imported, "eval", "perplexity_yarn2.json")))
  assert [r["length"] for r in results["yarn2"]] == [32, 64]
  assert all(r["tokens"] > 0 and r["documents"] == 3 for r in results["yarn2"])
  proc = _run("longjax.evaluate", "--workdir", imported, "--task", "loss_by_position", "--text",
              texts / "doc0.txt", "--lengths", "64", "--bins", "4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "windows of 64 tokens, 1 documents" in proc.stdout


@pytest.mark.parametrize("case", ["empty", "not utf-8", "missing", "wrong task"])
def test_bad_text_is_one_line_and_exit_2(imported, tmp_path, case):
  path, task = tmp_path / "doc.txt", "perplexity"
  if case == "empty":
    path.write_text("  \n")
    fragments = (str(path), "empty")
  elif case == "not utf-8":
    path.write_bytes(b"caf\xe9 latin-1")
    fragments = (str(path), "not UTF-8")
  elif case == "missing":
    fragments = (str(path), "no such file")
  else:
    path.write_text("text")
    task, fragments = "passkey", ("--text", "passkey")
  proc = _run("longjax.evaluate", "--workdir", imported, "--task", task, "--text", path)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and all(f in lines[0] for f in fragments), proc.stderr[-3000:]
