"""SIGTERM (a preempted VM, a scheduler's stop) saves the step reached and exits cleanly; the rerun goes on."""

import os
import signal
import subprocess
import time

from conftest import checkpoint_steps, read_metrics


def _wait_for_steps(proc: subprocess.Popen, workdir: str, steps: int, timeout: float = 300.0) -> None:
  deadline = time.monotonic() + timeout
  path = os.path.join(workdir, "metrics.jsonl")
  while time.monotonic() < deadline:
    assert proc.poll() is None, proc.communicate()[1][-4000:]
    if os.path.exists(path) and len(read_metrics(workdir)) >= steps:
      return
    time.sleep(0.1)
  proc.kill()
  raise AssertionError(f"no {steps} logged steps within {timeout} s")


def test_sigterm_saves_the_step_reached_and_the_rerun_continues(runner, tmp_path):
  workdir = str(tmp_path / "workdir")
  many = {"train.num_steps": 100_000, "train.checkpoint_every": 100_000}  # only the preemption saves
  proc = subprocess.Popen(runner.train_command(workdir, many), env=runner.env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    _wait_for_steps(proc, workdir, 3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, stderr[-4000:]
  assert "preempted: saved step" in stderr

  reached = read_metrics(workdir)[-1]["step"]
  assert 3 <= reached < 100_000
  assert checkpoint_steps(workdir) == [reached]

  runner.train(workdir, {**many, "train.num_steps": reached + 2})
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == list(range(1, reached + 3))
  assert checkpoint_steps(workdir) == [reached, reached + 2]
