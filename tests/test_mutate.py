"""tests/mutate.py's watchdog: a runaway mutant's worker is stopped with SIGXCPU (what mutmut records as timeout),
past the memory cap by the watchdog's check and past the CPU cap by the limit the worker sets itself."""

import importlib.util
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("mutate_script", os.path.join(HERE, "mutate.py"))
mutate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutate)

WORKER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("m", sys.argv[1]); m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
m.register_worker(sys.argv[2], "x_runaway__mutmut_1", float(sys.argv[3]))
mode, chunks = sys.argv[4], []
while True:
  if mode == "grow":
    chunks.append(bytearray(8 << 20))  # 8 MiB a step, touched (zeroed), so resident
  if mode != "spin":
    time.sleep(0.01)
"""


def _worker(directory, cpu_s, mode):
  return subprocess.Popen([sys.executable, "-c", WORKER, os.path.join(HERE, "mutate.py"), str(directory), str(cpu_s),
                           mode])


def test_mutate_watchdog_stops_a_worker_past_the_memory_cap_with_sigxcpu(tmp_path):
  logged = []
  watchdog = mutate.Watchdog(str(tmp_path), memory_bytes=200 << 20, log=lambda line, **_: logged.append(line))
  small = _worker(tmp_path, 600, "idle")  # registered, under the cap: left alone
  worker = _worker(tmp_path, 600, "grow")
  try:
    deadline = time.monotonic() + 30
    while worker.poll() is None and time.monotonic() < deadline:
      watchdog.check()
      time.sleep(0.05)
    assert worker.wait(timeout=10) == -signal.SIGXCPU
    assert small.poll() is None
    assert watchdog.stopped == ["x_runaway__mutmut_1"]
    assert len(logged) == 1 and "x_runaway__mutmut_1" in logged[0] and "0.20 GiB" in logged[0]
    assert mutate._tree_rss(small.pid) < 200 << 20
  finally:
    for process in (small, worker):
      process.kill()
      process.wait()
  watchdog.check()  # both gone: their registrations are dropped
  assert os.listdir(tmp_path) == []


def test_mutate_watchdog_worker_stops_itself_past_its_cpu_cap(tmp_path):
  start = time.monotonic()
  worker = _worker(tmp_path, 1, "spin")
  assert worker.wait(timeout=60) == -signal.SIGXCPU
  assert os.listdir(tmp_path) == [str(worker.pid)]
  assert time.monotonic() - start < 30
