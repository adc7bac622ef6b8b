"""For tests that start real processes: a free loopback port, and a worker script run in P processes (4 // P fake
CPU devices each, as launch/local.py starts them) whose `RESULT {json}` lines are collected."""

import json
import pathlib
import socket
import subprocess
from typing import Callable

REPO = pathlib.Path(__file__).resolve().parent.parent


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_workers(env: dict, processes: int, argv: Callable[[int, str], list[str]],
                extra_env: Callable[[int, str], dict] = lambda index, address: {}) -> list[dict]:
  """argv(index, coordinator address) in `processes` processes; each one's RESULT, by process index."""
  address = f"127.0.0.1:{free_port()}"
  procs = [subprocess.Popen(argv(index, address), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={4 // processes}",
                                 **extra_env(index, address)})
           for index in range(processes)]
  results = []
  try:
    for proc in procs:
      out, err = proc.communicate(timeout=600)
      assert proc.returncode == 0, err[-4000:]
      results.append(json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[len("RESULT "):]))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  return results
