"""`python -m longjax.evaluate --task ...` on the shared trained tiny run writes its JSON, PNG and table."""

import json
import os
import shutil
import subprocess
import sys

from train.conftest import REPO, assert_user_error


def _evaluate(runner, workdir, *args):
  return subprocess.run([sys.executable, "-m", "longjax.evaluate", f"--workdir={workdir}", *args], env=runner.env,
                        capture_output=True, text=True, timeout=600, cwd=REPO)


def test_passkey_and_kv_cache_write_json_and_png(runner, trained_workdir, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained_workdir, workdir)
  proc = _evaluate(runner, workdir, "--task=passkey", "--lengths=320,400", "--depths=0,1", "--trials=2",
                   "--digits=2", "--name=tiny")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "passkey: accuracy" in proc.stdout
  result = json.load(open(workdir / "eval" / "passkey_tiny.json"))
  assert result["lengths"] == [320, 400] and result["depths"] == [0.0, 1.0] and result["trials"] == 2
  assert all(0.0 <= a <= 1.0 for row in result["accuracy"] for a in row)
  assert all(n - 8 <= t <= n for n, t in zip([320, 400], result["prompt_tokens"]))
  assert os.path.getsize(workdir / "eval" / "passkey_tiny.png") > 5_000

  proc = _evaluate(runner, workdir, "--task=kv_cache", "--lengths=64,128,256", "--dtype=float32")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rope = json.load(open(workdir / "config.json"))["model"]["rope"]["rope_type"]
  result = json.load(open(workdir / "eval" / f"kv_cache_{rope}.json"))
  config = runner.config().model
  per_token = 2 * config.num_layers * config.num_kv_heads * config.resolved_head_dim * 4
  assert [s["total_bytes"] for s in result["sizes"]] == [n * per_token for n in (64, 128, 256)]
  assert os.path.getsize(workdir / "eval" / f"kv_cache_{rope}.png") > 5_000
  # under H2O with a budget of 100 tokens: at most 100 tokens a layer, each with its position and score per kv head
  proc = _evaluate(runner, workdir, "--task=kv_cache", "--lengths=64,256", "--dtype=float32", "--kv_policy=h2o",
                   "--kv_budget=100", "--name=h2o")
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.load(open(workdir / "eval" / "kv_cache_h2o.json"))
  h2o_token = per_token + config.num_layers * config.num_kv_heads * 8
  assert [s["total_bytes"] for s in result["sizes"]] == [64 * h2o_token, 100 * h2o_token]
  # the same budget given in bytes (the model's dtype, float32 here): the largest whole budget that fits
  proc = _evaluate(runner, workdir, "--task=kv_cache", "--lengths=64,256", "--dtype=float32", "--kv_policy=h2o",
                   f"--kv_budget_bytes={101 * h2o_token - 1}", "--name=h2o_bytes")
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.load(open(workdir / "eval" / "kv_cache_h2o_bytes.json"))
  assert [s["total_bytes"] for s in result["sizes"]] == [64 * h2o_token, 100 * h2o_token]
  assert_user_error(_evaluate(runner, workdir, "--task=passkey", "--kv_policy=h2o", "--kv_budget=100",
                              "--kv_budget_bytes=100000"), "give one of them, not both")
  assert_user_error(_evaluate(runner, workdir, "--task=passkey", "--kv_policy=h2o", "--kv_budget=0"), "kv_budget=0")

  assert_user_error(_evaluate(runner, workdir, "--task=passkey", "--depths=0,2"), "--depths")
