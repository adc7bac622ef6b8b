"""Bad input to `python -m longjax.generate` and `python -m longjax.evaluate`: one line naming what was wrong and
what is allowed, exit status 2, before any parameter is restored.

Each main runs once per case through its own entry point (`cli.run(main)`, argv as given on a command line),
all cases of a main in one interpreter, which pays the imports once: flags (and the --config.KEY flags that
each --config parse defines) are reset between cases.
"""

import json
import subprocess
import sys

from train.conftest import ABSL_LOG_LINE, REPO

# argv: the main's module, then a JSON list of argument lists; prints one JSON line: [[exit status, stderr], ...].
CASES = r"""
import contextlib, importlib, io, json, sys
from absl import flags
from longjax import cli
module = importlib.import_module(sys.argv[1])
outcomes = []
for arguments in json.loads(sys.argv[2]):
  flags.FLAGS.unparse_flags()
  for name in [name for name in flags.FLAGS if name.startswith("config.")]:  # ml_collections adds them per parse
    delattr(flags.FLAGS, name)
  sys.argv = [sys.argv[0], *arguments]
  stderr = io.StringIO()
  with contextlib.redirect_stderr(stderr):
    try:
      cli.run(module.main)
      status = 0
    except SystemExit as e:
      status = e.code
  outcomes.append([status, stderr.getvalue()])
print("OUTCOMES " + json.dumps(outcomes), flush=True)
"""


def _outcomes(runner, module: str, cases: list[list[str]]) -> list[tuple[int, str]]:
  proc = subprocess.run([sys.executable, "-c", CASES, module, json.dumps(cases)], env=runner.env, cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith("OUTCOMES "))
  return [tuple(outcome) for outcome in json.loads(line[len("OUTCOMES "):])]


def _one_line(outcome: tuple[int, str], *fragments: str) -> None:
  status, stderr = outcome
  lines = [line for line in stderr.splitlines() if line.strip() and not ABSL_LOG_LINE.match(line)]
  assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), outcome
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])


def test_generate_reports_bad_input_in_one_line(runner, trained_workdir):
  run = [f"--workdir={trained_workdir}", "--prompt=import json"]
  cases = {
      ("max_length=12 is too short", "holds 12 tokens", "at least 16"): [*run, "--max_length=12", "--max_new_tokens=4"],
      ("max_new_tokens=0", "must be >= 1"): [*run, "--max_new_tokens=0"],
      ("max_new_tokens=-3", "must be >= 1"): [*run, "--max_new_tokens=-3"],
      ("temperature=-0.5", "must be >= 0"): [*run, "--temperature=-0.5"],
      ("top_p=0.0", "(0, 1]"): [*run, "--top_p=0"],
      ("top_p=1.5", "(0, 1]"): [*run, "--top_p=1.5"],
      ("top_k=-1", "must be >= 0"): [*run, "--top_k=-1"],
  }
  for fragments, outcome in zip(cases, _outcomes(runner, "longjax.generate", list(cases.values())), strict=True):
    _one_line(outcome, *fragments)


def test_evaluate_reports_bad_input_in_one_line(runner, trained_workdir, tmp_path):
  (tmp_path / "empty.txt").write_text("  \n")
  (tmp_path / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
  (tmp_path / "nothing").mkdir()
  run = [f"--workdir={trained_workdir}"]
  # the flat key of earlier versions (model.attention.s2.at_eval now): old command lines keep working
  s2 = [f"--config={REPO}/configs/tiny.py:attention=s2", "--config.model.attention.s2_at_eval=True"]
  cases = {
      ("--task", "bogus"): [*run, "--task=bogus"],
      ("rope_type='bogus'", "allowed:"): [*run, f"--config={REPO}/configs/tiny.py",
                                          "--config.model.rope.rope_type=bogus"],
      ("model.attention.type", "bogus", "allowed:"): [*run, f"--config={REPO}/configs/tiny.py",
                                                      "--config.model.attention.type=bogus"],
      ("--lengths: length 100", "s2 with s2.at_eval=True", "25 tokens", "allowed:"): [*run, *s2, "--lengths=100"],
      ("--lengths: length 36", "s2 with s2.at_eval=True", "9 tokens"): [*run, *s2, "--task=loss_by_position",
                                                                         "--lengths=36"],
      ("empty.txt is empty", "allowed:"): [*run, f"--text={tmp_path}/empty.txt"],
      ("latin1.txt is not UTF-8", "allowed:"): [*run, f"--text={tmp_path}/latin1.txt"],
      ("holds no file", "allowed:"): [*run, f"--text={tmp_path}/nothing"],
      ("--lengths=0", "positive"): [*run, "--lengths=0"],
  }
  outcomes = _outcomes(runner, "longjax.evaluate.__main__", list(cases.values()))
  for fragments, outcome in zip(cases, outcomes, strict=True):
    _one_line(outcome, *fragments)
