"""The evaluate and generate mains on a trained run, and their one-line errors."""

import json
import os
import subprocess
import sys

from conftest import REPO, assert_user_error


def _main(runner, module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], env=runner.env, capture_output=True, text=True,
                        timeout=600, cwd=REPO)


def test_evaluate_writes_perplexity_against_length(runner, trained_copy):
  config = os.path.join(REPO, "configs", "tiny.py:rope=yarn")
  proc = _main(runner, "longjax.evaluate", f"--workdir={trained_copy}", f"--config={config}", "--name=yarn",
               "--config.eval.lengths=(32,64)", "--config.eval.stride=32", "--config.eval.max_document_tokens=512",
               "--config.eval.max_documents=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(os.path.join(trained_copy, "eval", "perplexity_yarn.json")))["yarn"]
  assert [r["length"] for r in results] == [32, 64]
  assert all(1.0 < r["perplexity"] < 259.0 and r["tokens"] > 0 for r in results)
  assert os.path.getsize(os.path.join(trained_copy, "eval", "perplexity_yarn.png")) > 10_000


def test_generate_prints_a_continuation(runner, trained_copy):
  proc = _main(runner, "longjax.generate", f"--workdir={trained_copy}", "--prompt=import json",
               "--max_new_tokens=8")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.startswith("import json")


def test_mains_report_bad_input_in_one_line(runner, trained_copy, tmp_path):
  assert_user_error(_main(runner, "longjax.generate", f"--workdir={tmp_path}", "--prompt=x"), "config.json")
  config = os.path.join(REPO, "configs", "tiny.py:rope=bogus")
  assert_user_error(_main(runner, "longjax.evaluate", f"--workdir={trained_copy}", f"--config={config}"),
                    "rope_type='bogus'", "allowed:")
  assert_user_error(_main(runner, "longjax.generate", f"--workdir={trained_copy}", "--max_new_tokens=0"),
                    "max_new_tokens")
