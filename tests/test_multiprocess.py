"""A real multi-process run: two processes joined by jax.distributed (gloo collectives on loopback)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(workdir, corpus, data_dir, steps):
  command = [sys.executable, os.path.join(ROOT, "launch", "local.py"), "--num_processes", "2", "--",
             sys.executable, "-m", "longjax.train", "--config", os.path.join(ROOT, "configs", f"tiny.py:steps={steps}"),
             "--workdir", str(workdir), f"--config.data.text_dir={corpus}", f"--config.data.data_dir={data_dir}",
             "--config.train.log_every=1", "--config.train.seq_len=64", "--config.train.checkpoint_every=2"]
  return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_two_processes_train_checkpoint_and_resume(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for i in range(8):  # enough documents for two processes to share
    (corpus / f"doc{i}.py").write_text("\n".join(f"def f{i}_{j}(x):\n  return x * {j} + {i}" for j in range(60)))
  run = _launch(tmp_path / "run", corpus, tmp_path / "tfds", steps=3)
  assert run.returncode == 0, run.stdout[-3000:]
  done = [line for line in run.stdout.splitlines() if "done:" in line]
  assert sorted(line[:3] for line in done) == ["[0]", "[1]"], run.stdout[-3000:]
  losses = {line[:3]: line.split("'loss': ")[1].split(",")[0] for line in done}
  assert losses["[0]"] == losses["[1]"]  # one global computation, not two
  metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics] == [1, 2, 3]  # only process 0 writes
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2", "3"]
  resumed = _launch(tmp_path / "run", corpus, tmp_path / "tfds", steps=5)
  assert resumed.returncode == 0, resumed.stdout[-3000:]
  metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
