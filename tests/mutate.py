"""Mutation check (mutmut 3), one source file at a time, each against only the tests that exercise it.

  make mutate                                   # every file of MUTATED
  make mutate MODULE=longjax/evaluate/passkey.py  # one file (or a folder)
  python tests/mutate.py FILE --again            # after adding tests: rerun only what the last run did not kill

Per file: a fresh `mutants/`, mutmut's settings from setup.cfg with `only_mutate` set to that file and the test
selection set to its tests (TESTS below, else the mirrored tests/<area>/test_<name>*.py); mutmut's own per-test
coverage then runs, for each mutant, only the selected tests that call the mutated function. The score and every
survivor (with its diff) go to mutants-report/<file>.txt. The score counts every mutant: "no tests" (a function
none of the selected tests calls) and "timeout" (killed by the CPU-time limit) included. Not part of `make test` or CI.

A watchdog stops runaway mutants (a prompt that grows forever, a loop that never ends) before they take the machine:
each mutant's worker lowers its CPU-time limit to max(--cpu-cap, 4 x its tests' measured time) seconds, and a thread
of the mutmut process sends SIGXCPU to any worker whose resident memory (with its children's) passes --memory-cap.
SIGXCPU is the signal of mutmut's own CPU limit, so either stop is recorded as mutmut records its timeouts.

mutmut leaves decorated functions alone (flax's `@nn.compact` methods, `@property`, `@jax.jit`): their lines are
checked by the tests, not by this.
"""

import argparse
import dataclasses
import fnmatch
import glob
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import redirect_stdout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALIVE = (0, 33, None)  # mutmut's exit codes: survived, no tests; None: not run
MUTATED = ["longjax/ops", "longjax/evaluate", "longjax/positional", "longjax/nn/megalodon.py"]

# Source file -> the tests that pin it, where the mirrored name is not enough (or too much: slow end-to-end tests
# that also reach the file are left to `make test`).
TESTS = {
    # test_megalodon.py's streaming and generation tests take 1-1.5 minutes each on a loaded 2-core machine
    "longjax/nn/megalodon.py": ["tests/nn/test_megalodon_equations.py", "tests/nn/test_megalodon_streaming.py",
                                "tests/nn/test_megalodon_params.py",
                                "tests/nn/test_megalodon.py::test_cema_parameters_follow_the_reference_init",
                                "tests/nn/test_megalodon.py::test_embeddings_follow_the_reference_gaussian_init",
                                "tests/nn/test_megalodon.py::test_cema_inits_keep_the_parameter_dtype",
                                "tests/nn/test_megalodon.py::test_megalodon_7b_parameter_count"],
    # MEGALODON's pure functions (norms, CEMA coefficients and state, chunk attention), pinned by the same tests
    "longjax/ops/megalodon.py": ["tests/nn/test_megalodon_equations.py", "tests/nn/test_megalodon_streaming.py",
                                "tests/nn/test_megalodon.py::test_cema_parameters_follow_the_reference_init"],
    "longjax/evaluate/passkey.py": ["tests/evaluate/test_passkey.py", "tests/evaluate/test_passkey_grid.py",
                                    "tests/evaluate/test_exact_lengths.py"],
    "longjax/evaluate/ruler.py": ["tests/evaluate/test_ruler.py", "tests/evaluate/test_exact_lengths.py",
                                  "tests/evaluate/test_ruler_fit.py"],
    # ruler.py's task families, tested through it
    "longjax/evaluate/ruler_niah.py": ["tests/evaluate/test_ruler.py", "tests/evaluate/test_ruler_families.py"],
    "longjax/evaluate/ruler_vt.py": ["tests/evaluate/test_ruler.py", "tests/evaluate/test_ruler_families.py"],
    "longjax/evaluate/ruler_aggregation.py": ["tests/evaluate/test_ruler.py", "tests/evaluate/test_exact_lengths.py",
                                              "tests/evaluate/test_ruler_families.py"],
    "longjax/evaluate/ruler_qa.py": ["tests/evaluate/test_ruler.py", "tests/evaluate/test_ruler_families.py"],
    "longjax/ops/landmark.py": ["tests/ops/test_landmark.py", "tests/ops/test_landmark_selection.py"],
    "longjax/ops/cema.py": ["tests/ops/test_cema.py"],
    "longjax/ops/backends.py": ["tests/ops/test_attention.py"],
    "longjax/ops/blockwise.py": ["tests/ops/test_attention.py"],
    "longjax/ops/reference.py": ["tests/ops/test_attention.py"],
    "longjax/ops/cached.py": ["tests/ops/test_caches.py"],
    "longjax/ops/sink_cache.py": ["tests/ops/test_caches.py"],
    "longjax/real_model/kv_compression.py": ["tests/inference/test_kv_compression_losses.py",
                                             "tests/test_real_model.py::test_the_kv_compression_table_and_plot_join_the_report"],
    "longjax/ops/kv_compress.py": ["tests/ops/test_kv_compress.py", "tests/ops/test_kv_compress_exact.py",
                                   "tests/ops/test_sink_chunk_attention.py"],
    "longjax/evaluate/plots.py": ["tests/evaluate/test_plots.py", "tests/evaluate/test_ruler.py"],
    "longjax/evaluate/tasks.py": ["tests/evaluate/test_tasks.py", "tests/evaluate/test_tasks_wiring.py",
                                  "tests/evaluate/test_ruler_task.py", "tests/evaluate/test_training_eval.py"],
    "longjax/positional/__init__.py": ["tests/positional"],
    "longjax/positional/rope.py": ["tests/positional"],
    "longjax/positional/methods.py": ["tests/positional"],
}


class Watchdog:
  """Stops registered mutant workers past a memory cap with SIGXCPU, from a thread of the mutmut process.

  A worker registers by writing a file named by its pid (its start time and mutant name inside) to `directory`;
  the thread reads the resident memory of each (with its descendants') every `poll_s` seconds and sends SIGXCPU,
  then SIGKILL `grace_s` later if it still runs. The start time guards against a reused pid."""

  def __init__(self, directory, memory_bytes, poll_s=0.5, grace_s=10.0, log=print):
    self.directory, self.memory_bytes, self.poll_s, self.grace_s, self.log = directory, memory_bytes, poll_s, grace_s, log
    self.stopping = {}  # pid -> time SIGXCPU was sent, while it runs
    self.stopped = []  # the mutants stopped, in order
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._loop, name="mutate-watchdog", daemon=True)

  def start(self):
    self._thread.start()
    return self

  def close(self):
    self._done.set()
    if self._thread.is_alive():
      self._thread.join()

  def _loop(self):
    while not self._done.wait(self.poll_s):
      self.check()

  def check(self):
    """One pass over the registered workers; returns the pids stopped in it."""
    stopped = []
    for name in os.listdir(self.directory):
      if not name.isdigit():
        continue  # a registration being written
      pid = int(name)
      try:
        with open(os.path.join(self.directory, name)) as f:
          start, mutant = f.read().split(" ", 1)
      except (OSError, ValueError):
        continue
      if _start_time(pid) != start:  # gone (or the pid reused)
        self._forget(pid, name)
        continue
      if pid in self.stopping:
        if time.monotonic() - self.stopping[pid] > self.grace_s:
          _signal(pid, signal.SIGKILL)
        continue
      rss = _tree_rss(pid)
      if rss > self.memory_bytes:
        self.log(f"watchdog: {mutant} (pid {pid}) at {rss / 2**30:.2f} GiB resident, over the cap of "
                 f"{self.memory_bytes / 2**30:.2f} GiB: SIGXCPU (recorded as timeout)", flush=True)
        self.stopping[pid] = time.monotonic()
        self.stopped.append(mutant)
        _signal(pid, signal.SIGXCPU)
        stopped.append(pid)
    return stopped

  def _forget(self, pid, name):
    self.stopping.pop(pid, None)
    try:
      os.remove(os.path.join(self.directory, name))
    except OSError:
      pass


def _signal(pid, sig):
  try:
    os.kill(pid, sig)
  except ProcessLookupError:
    pass


def _start_time(pid):
  """The process's start time in clock ticks (field 22 of /proc/PID/stat), or None when it is gone."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rpartition(")")[2].split()[19]
  except OSError:
    return None


def _tree_rss(pid):
  """Resident bytes of `pid` and its descendants (from /proc)."""
  children = {}
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          children.setdefault(int(f.read().rpartition(")")[2].split()[1]), []).append(int(entry))
      except OSError:
        pass
  total, todo = 0, [pid]
  while todo:
    p = todo.pop()
    todo += children.get(p, [])
    try:
      with open(f"/proc/{p}/statm") as f:
        total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
      pass
  return total


def register_worker(directory, mutant_name, cpu_s):
  """In a mutant's worker: register with the watchdog and lower the CPU-time limit to `cpu_s` more seconds."""
  path = os.path.join(directory, str(os.getpid()))
  with open(path + ".tmp", "w") as f:
    f.write(f"{_start_time(os.getpid())} {mutant_name}")
  os.replace(path + ".tmp", path)
  limit = int(time.process_time() + cpu_s)
  soft, _ = resource.getrlimit(resource.RLIMIT_CPU)
  if soft == resource.RLIM_INFINITY or limit < soft:
    resource.setrlimit(resource.RLIMIT_CPU, (limit, limit + 1))  # the kernel sends SIGXCPU, as for mutmut's limit


def _watch_workers(directory, cpu_cap, watchdog):
  """Make mutmut's pytest runner register each mutant's worker (inherited by the fork server and its workers), and
  start `watchdog` once the mutant runner has started (after the fork server's fork: no thread crosses a fork)."""
  from mutmut.runners.harness import PytestRunner
  from mutmut.state import state
  from mutmut.workers import isolation

  for runner in (isolation.ForkServerRunner, isolation.ForkRunner):
    def startup(self, _startup=runner.startup):
      _startup(self)
      if not watchdog._thread.is_alive():
        watchdog.start()
    runner.startup = startup

  run_tests = PytestRunner.run_tests

  def watched_run_tests(self, *, mutant_name, tests):
    if mutant_name and mutant_name != "fail":  # not the clean or forced-fail runs
      measured = sum(state().duration_by_test.get(test, 0.0) for test in tests)
      register_worker(directory, mutant_name, max(cpu_cap, 4 * measured))
    return run_tests(self, mutant_name=mutant_name, tests=tests)

  PytestRunner.run_tests = watched_run_tests


def source_files(selection):
  files = []
  for item in selection:
    item = os.path.relpath(os.path.join(ROOT, item), ROOT)
    if os.path.isdir(os.path.join(ROOT, item)):
      files += sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, item, "**", "*.py"), recursive=True))
    else:
      files.append(item)
  return [f for f in files if not f.endswith(("__main__.py", "/__init__.py")) or f in TESTS]


def tests_for(path):
  if path in TESTS:
    return TESTS[path]
  area, name = os.path.split(os.path.relpath(path, "longjax"))
  mirrored = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "tests", area,
                                                                           f"test_{name[:-3]}*.py")))
  return mirrored


def _verdicts(path):
  """mutant name -> mutmut's exit code (None: not run yet) from the last run's mutants/<path>.meta, or {}."""
  meta = os.path.join(ROOT, "mutants", path + ".meta")
  if not os.path.exists(meta):
    return {}
  with open(meta) as f:
    return json.load(f)["exit_code_by_key"]


def _keep_verdicts(path, old, rerun):
  """Put back the last run's verdicts of the mutants not rerun (mutmut resets them all when the tests change)."""
  meta = os.path.join(ROOT, "mutants", path + ".meta")
  with open(meta) as f:
    data = json.load(f)
  for name, code in old.items():
    if name not in rerun and name in data["exit_code_by_key"]:
      data["exit_code_by_key"][name] = code
  with open(meta, "w") as f:
    json.dump(data, f, indent=4)


def run_one(path, max_children, tests=None, functions=None, again=False, memory_cap_gb=3.0, cpu_cap_s=60.0):
  """In a fresh process: mutmut run over `path` with its tests; prints and writes the report. With `again`,
  only the mutants the last run left alive (survived, no tests, not run) run; the killed keep their verdict."""
  from mutmut import configuration

  tests = tests or tests_for(path)
  if not tests:
    print(f"{path}: no tests found (add it to TESTS in tests/mutate.py)")
    return 1
  configuration._config = dataclasses.replace(configuration._load_config(), only_mutate=[path],
                                              pytest_add_cli_args_test_selection=tests)
  from mutmut.__main__ import cli  # reads the configuration on import

  module = path[:-3].replace("/", ".").removesuffix(".__init__")
  print(f"{path}: mutating, tests {' '.join(tests)}", flush=True)
  old = _verdicts(path) if again else {}
  # a function's mutants, or one mutant by its name (x_fit__mutmut_3)
  names = ([f"{module}.*{name}" if "__mutmut_" in name else f"{module}.*{name}__mutmut_*" for name in functions]
           if functions else [f"{module}.*"])
  if old:  # again (without a last run of this file in mutants/: all)
    names = [n for n, code in old.items() if code in ALIVE and any(fnmatch.fnmatch(n, p) for p in names)]
    print(f"{path}: again, {len(names)} mutants the last run did not kill", flush=True)
  watch_dir = tempfile.mkdtemp(prefix="mutate-watchdog-")
  watchdog = Watchdog(watch_dir, int(memory_cap_gb * 2**30))
  _watch_workers(watch_dir, cpu_cap_s, watchdog)
  try:
    if names:
      cli(["run", "--max-children", str(max_children), *names], standalone_mode=False)
  except SystemExit as stop:
    if stop.code:
      return stop.code
  finally:
    watchdog.close()
    shutil.rmtree(watch_dir, ignore_errors=True)
    if old:
      _keep_verdicts(path, old, set(names))
  results = io.StringIO()
  with redirect_stdout(results):
    cli(["results", "--all", "true"], standalone_mode=False)
  lines = [line.strip() for line in results.getvalue().splitlines() if ": " in line]
  status = {}
  for line in lines:
    name, _, verdict = line.rpartition(": ")
    if verdict != "not checked":  # outside --functions
      status.setdefault(verdict, []).append(name)
  killed = len(status.get("killed", [])) + len(status.get("timeout", []))
  total = sum(len(v) for v in status.values())
  score = f"{path}: {killed}/{total} killed ({100 * killed / max(total, 1):.1f}%); " + ", ".join(
      f"{k} {len(v)}" for k, v in sorted(status.items()))
  report = [score, ""]
  if watchdog.stopped:
    report += ["Stopped by the watchdog's memory cap (recorded as timeout): " +
               ", ".join(watchdog.stopped), ""]
  for verdict in ("survived", "no tests", "suspicious"):
    for name in status.get(verdict, []):
      diff = io.StringIO()
      with redirect_stdout(diff):
        cli(["show", name], standalone_mode=False)
      report += [f"## {verdict}: {name}", diff.getvalue().strip(), ""]
  os.makedirs(os.path.join(ROOT, "mutants-report"), exist_ok=True)
  with open(os.path.join(ROOT, "mutants-report", path.replace("/", ".") + ".txt"), "w") as f:
    f.write("\n".join(report) + "\n")
  print(score, flush=True)
  return 0


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("modules", nargs="*", default=MUTATED, help="source files or folders (default: %(default)s)")
  parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
  parser.add_argument("--tests", help="comma-separated test files or folders, instead of the file's own")
  parser.add_argument("--functions", help="comma-separated function names, or mutant names (x_f__mutmut_3): "
                                          "run only these (one file)")
  parser.add_argument("--again", action="store_true",
                      help="keep mutants/ and rerun only the mutants the last run of each file did not kill")
  parser.add_argument("--memory-cap", type=float, default=3.0, metavar="GB",
                      help="stop a mutant's worker past this resident memory (GiB; default %(default)s)")
  parser.add_argument("--cpu-cap", type=float, default=60.0, metavar="S",
                      help="stop a mutant's worker past max(S, 4 x its tests' measured time) seconds of CPU "
                           "(default %(default)s)")
  parser.add_argument("--one", help=argparse.SUPPRESS)
  args = parser.parse_args()
  os.chdir(ROOT)
  if args.one:
    return run_one(args.one, args.max_children, args.tests and args.tests.split(","),
                   args.functions and args.functions.split(","), args.again, args.memory_cap, args.cpu_cap)
  failed = 0
  for path in source_files(args.modules or MUTATED):
    if not args.again:
      shutil.rmtree(os.path.join(ROOT, "mutants"), ignore_errors=True)  # a file's mutants and stats start afresh
    command = [sys.executable, __file__, "--one", path, "--max-children", str(args.max_children),
               "--memory-cap", str(args.memory_cap), "--cpu-cap", str(args.cpu_cap)]
    command += ["--again"] if args.again else []
    command += ["--tests", args.tests] if args.tests else []
    failed |= subprocess.call(command + (["--functions", args.functions] if args.functions else []))
  return failed


if __name__ == "__main__":
  sys.exit(main())
