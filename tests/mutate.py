"""Mutation check (mutmut 3), one source file at a time, each against only the tests that exercise it.

  make mutate                                   # every file of MUTATED
  make mutate MODULE=longjax/evaluate/passkey.py  # one file (or a folder)
  python tests/mutate.py FILE --again            # after adding tests: rerun only what the last run did not kill

Per file: a fresh `mutants/`, mutmut's settings from setup.cfg with `only_mutate` set to that file and the test
selection set to its tests (TESTS below, else the mirrored tests/<area>/test_<name>*.py); mutmut's own per-test
coverage then runs, for each mutant, only the selected tests that call the mutated function. The score and every
survivor (with its diff) go to mutants-report/<file>.txt. The score counts every mutant: "no tests" (a function
none of the selected tests calls) and "timeout" (killed by the CPU-time limit) included. Not part of `make test` or CI.

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
import shutil
import subprocess
import sys
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
    "longjax/evaluate/ruler.py": ["tests/evaluate/test_ruler.py", "tests/evaluate/test_exact_lengths.py"],
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
    "longjax/ops/kv_compress.py": ["tests/ops/test_kv_compress.py", "tests/ops/test_kv_compress_exact.py",
                                   "tests/ops/test_sink_chunk_attention.py"],
    "longjax/evaluate/plots.py": ["tests/evaluate/test_ruler.py"],
    "longjax/evaluate/tasks.py": ["tests/evaluate/test_tasks.py", "tests/evaluate/test_ruler_task.py",
                                  "tests/evaluate/test_training_eval.py"],
    "longjax/positional/__init__.py": ["tests/positional"],
    "longjax/positional/rope.py": ["tests/positional"],
    "longjax/positional/methods.py": ["tests/positional"],
}


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


def run_one(path, max_children, tests=None, functions=None, again=False):
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
  names = [f"{module}.*{name}__mutmut_*" for name in functions] if functions else [f"{module}.*"]
  if old:  # again (without a last run of this file in mutants/: all)
    names = [n for n, code in old.items() if code in ALIVE and any(fnmatch.fnmatch(n, p) for p in names)]
    print(f"{path}: again, {len(names)} mutants the last run did not kill", flush=True)
  try:
    if names:
      cli(["run", "--max-children", str(max_children), *names], standalone_mode=False)
  except SystemExit as stop:
    if stop.code:
      return stop.code
  finally:
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
  parser.add_argument("--functions", help="comma-separated function names: mutate only these (one file)")
  parser.add_argument("--again", action="store_true",
                      help="keep mutants/ and rerun only the mutants the last run of each file did not kill")
  parser.add_argument("--one", help=argparse.SUPPRESS)
  args = parser.parse_args()
  os.chdir(ROOT)
  if args.one:
    return run_one(args.one, args.max_children, args.tests and args.tests.split(","),
                   args.functions and args.functions.split(","), args.again)
  failed = 0
  for path in source_files(args.modules or MUTATED):
    if not args.again:
      shutil.rmtree(os.path.join(ROOT, "mutants"), ignore_errors=True)  # a file's mutants and stats start afresh
    command = [sys.executable, __file__, "--one", path, "--max-children", str(args.max_children)]
    command += ["--again"] if args.again else []
    command += ["--tests", args.tests] if args.tests else []
    failed |= subprocess.call(command + (["--functions", args.functions] if args.functions else []))
  return failed


if __name__ == "__main__":
  sys.exit(main())
