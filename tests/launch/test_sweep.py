"""launch/sweep.py: a config's get_sweep expands into named runs, runs them, and --collect builds one table."""

import csv
import importlib.util
import json
import os
import shlex
import subprocess
import sys

import pytest

from train.conftest import REPO, read_metrics

SWEEP = os.path.join(REPO, "launch", "sweep.py")
ROPE_SWEEP = [(rope, lr) for rope in ("default", "linear", "ntk", "yarn") for lr in ("0.001", "0.003")]


def _sweep(*args: str, env=None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, SWEEP, *args], capture_output=True, text=True, timeout=600,
                        cwd=os.path.dirname(REPO), env=env)


def _commands(proc: subprocess.CompletedProcess) -> list[list[str]]:
  assert proc.returncode == 0, proc.stderr
  return [shlex.split(line) for line in proc.stdout.splitlines()]


def _assert_usage_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
  lines = proc.stderr.splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  assert fragment in lines[0], (fragment, lines[0])


def _configs(tmp_path, **files: str):
  """A configs directory beside the repo's base.py and tiny.py, holding the given config files."""
  directory = tmp_path / "configs"
  directory.mkdir()
  for name in ("base.py", "tiny.py"):
    (directory / name).symlink_to(os.path.join(REPO, "configs", name))
  for name, text in files.items():
    (directory / f"{name}.py").write_text("import tiny\n\n\ndef get_config(arg=None):\n  return tiny.get_config(arg)\n"
                                          f"\n\ndef get_sweep(add):\n{text}")
  return directory


def test_the_rope_sweep_expands_into_named_runs(tmp_path):
  commands = _commands(_sweep("--config", os.path.join(REPO, "configs", "sweep_rope.py"), "--workdir",
                              str(tmp_path), "--launcher", "print", "--", "--config.train.num_steps=2"))
  assert len(commands) == len(ROPE_SWEEP)
  for command, (rope, lr) in zip(commands, ROPE_SWEEP):
    name = f"rope_type={rope},learning_rate={lr}"
    assert command == ["python", "-m", "longjax.train", "--config", "configs/sweep_rope.py", "--workdir",
                       f"{tmp_path}/{name}", f"--config.model.rope.rope_type={rope}",
                       f"--config.train.learning_rate={lr}", "--config.train.num_steps=2"]


def test_remote_launchers_get_one_invocation_a_run(tmp_path):
  spec = os.path.join(REPO, "configs", "sweep_rope.py")
  k8s = _commands(_sweep("--config", spec, "--workdir", "gs://b/Rope_Sweep", "--launcher", "k8s", "--launcher_args",
                         "--image img --hosts 2 --gpus_per_host 8", "--dry_run"))
  assert [c[c.index("--name") + 1] for c in k8s] == [f"rope-sweep-{i}" for i in range(len(ROPE_SWEEP))]
  for command in k8s:
    assert command[1].endswith("launch/k8s.py") and command[2:8] == ["--image", "img", "--hosts", "2",
                                                                     "--gpus_per_host", "8"]
    assert command[command.index("--") + 1:][:3] == ["python", "-m", "longjax.train"]
  slurm = _commands(_sweep("--config", spec, "--workdir", "/shared/sweep", "--launcher", "slurm", "--launcher_args",
                           "--nodes 2", "--dry_run"))
  assert [c[c.index("--job_name") + 1] for c in slurm] == [f"rope_type={r},learning_rate={lr}" for r, lr in ROPE_SWEEP]
  tpu = _commands(_sweep("--config", spec, "--workdir", "gs://b/sweep", "--launcher", "tpu_pod", "--launcher_args",
                         "--name my-tpu --zone z", "--dry_run"))
  assert all(c[2:3] == ["run"] and "--wait" in c for c in tpu)  # one run after another on the slice
  # Each launcher accepts what the sweep hands it: its own dry run succeeds.
  for command in (k8s[0], slurm[0], tpu[0]):
    dash = command.index("--")
    ran = subprocess.run([*command[:dash], "--dry_run", *command[dash:]], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0 and "longjax.train" in ran.stdout, ran.stderr


def test_run_names_shorten_keys_only_where_unique():
  sys.path.insert(0, os.path.dirname(SWEEP))
  try:
    spec = importlib.util.spec_from_file_location("sweep_launcher", SWEEP)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
  finally:
    sys.path.remove(os.path.dirname(SWEEP))
  runs = [{"model.rope.factor": 4.0, "model.lora.alpha": 16.0, "model.rope.alpha": 2.0, "eval.lengths": (64, 128)},
          {"model.rope.factor": 8.0, "model.lora.alpha": 8.0, "model.rope.alpha": 1.5, "eval.lengths": (64,)}]
  assert sweep.run_names(runs) == ["factor=4,model.lora.alpha=16,model.rope.alpha=2,lengths=64-128",
                                   "factor=8,model.lora.alpha=8,model.rope.alpha=1.5,lengths=64"]
  assert [sweep._flag_value(v) for v in (3e-4, (64,), (64, 128), "yarn", True)] == [
      "0.0003", "(64,)", "(64, 128)", "yarn", "True"]


@pytest.mark.parametrize("body,fragment", [
    ("  add(**{'train.learning_rat': 1e-3})\n", "sweep run 0: unknown config key 'train.learning_rat'"),
    ("  add(**{'train.num_steps': 1})\n  add(**{'model.rope.rope_type': 'bogus'})\n",
     "sweep run 1: model.rope.rope_type='bogus' is invalid"),
    ("  add(**{'train.num_steps': 2})\n  add(**{'train.num_steps': 2})\n", "two runs are both 'num_steps=2'"),
    ("  add(learning_rate=1e-3)\n", "must be dotted config keys"),
    ("  pass\n", "get_sweep called add() for no run"),
    ("  raise RuntimeError('grid too large')\n", "get_sweep failed: RuntimeError: grid too large"),
])
def test_bad_sweeps_are_one_line(tmp_path, body, fragment):
  configs = _configs(tmp_path, bad=body)
  _assert_usage_error(_sweep("--config", str(configs / "bad.py"), "--workdir", str(tmp_path / "w"), "--dry_run"),
                      fragment)


def test_bad_arguments_are_one_line(tmp_path):
  tiny = os.path.join(REPO, "configs", "tiny.py")
  _assert_usage_error(_sweep("--config", tiny, "--workdir", str(tmp_path)), "defines no get_sweep(add)")
  _assert_usage_error(_sweep("--config", "nope.py", "--workdir", str(tmp_path)), "config file 'nope.py' is invalid")
  _assert_usage_error(_sweep("--workdir", str(tmp_path)), "give --config FILE[:arg] and --workdir ROOT")
  _assert_usage_error(_sweep("--collect", str(tmp_path)), "no run directory")
  _assert_usage_error(_sweep("--config", tiny, "--workdir", "w", "--launcher", "ray"), "invalid choice: 'ray'")
  _assert_usage_error(_sweep("--config", tiny, "--workdir", "w", "--launcher_args", "--nodes 2"),
                      "--launcher_args is for the tpu_pod, slurm and k8s launchers")


def test_local_sweep_runs_then_collect_builds_the_table(runner, tmp_path):
  # Two seeds of the shrunk tiny model: the same compiled programs, two different runs.
  configs = _configs(tmp_path, seeds="  for seed in (0, 1):\n    add(seed=seed)\n")
  root = tmp_path / "sweep"
  flags = [f"--config.{key}={value}" for key, value in runner.overrides().items()]
  ran = _sweep("--config", f"{configs / 'seeds.py'}:steps=2", "--workdir", str(root), "--", *flags, env=runner.env)
  assert ran.returncode == 0, ran.stderr[-3000:]
  assert sorted(os.listdir(root)) == ["seed=0", "seed=1"]
  evaluated = subprocess.run([sys.executable, "-m", "longjax.evaluate", "--workdir", str(root / "seed=1"),
                              "--lengths", "64"], capture_output=True, text=True, timeout=600, cwd=REPO,
                             env=runner.env)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]

  collected = _sweep("--collect", str(root))
  assert collected.returncode == 0, collected.stderr
  with open(root / "sweep.csv") as f:
    header, *rows = list(csv.reader(f))
  assert header[:4] == ["run", "seed", "step", "loss"] and len(rows) == 2
  column = dict(zip(header, zip(*rows)))
  assert column["run"] == ("seed=0", "seed=1") and column["seed"] == ("0", "1") and column["step"] == ("2", "2")
  for name, loss in zip(column["run"], column["loss"]):
    assert float(loss) == read_metrics(root / name)[-1]["loss"]
  assert column["loss"][0] != column["loss"][1]  # different seeds, different runs
  [result] = (root / "seed=1" / "eval").glob("perplexity_*.json")
  with open(result) as f:
    [[length]] = json.load(f).values()
  assert column[f"{result.stem} ppl@64"] == ("", str(length["perplexity"]))
  table = (root / "sweep.md").read_text().splitlines()
  assert table[0].startswith("| run | seed | step | loss |") and len(table) == 4
  assert table == collected.stdout.splitlines()[:4]
  assert (root / "sweep_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
