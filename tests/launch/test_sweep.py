"""launch/sweep.py: a config's get_sweep expands into named runs, runs them, and --collect builds one table."""

import csv
import importlib.util
import json
import os
import re
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


def _sections(proc: subprocess.CompletedProcess) -> tuple[list[tuple[str, str]], str]:
  """A sweep's dry run: ([(run name, what its launcher prints)], what builds the table)."""
  assert proc.returncode == 0, proc.stderr
  *runs, table = re.split(r"^# ==== ", proc.stdout, flags=re.M)[1:]
  assert table.startswith("then the table")
  return [tuple(section.split("\n", 1)) for section in runs], table.split("\n", 1)[1]


def _train_command(name: str, root: str, rope: str, lr: str) -> list[str]:
  return ["python", "-m", "longjax.train", "--config", "configs/sweep_rope.py", "--workdir", f"{root}/{name}",
          f"--config.model.rope.rope_type={rope}", f"--config.train.learning_rate={lr}"]


def test_k8s_sweep_dry_run_prints_every_manifest_and_the_table_step():
  yaml = pytest.importorskip("yaml")
  spec = os.path.join(REPO, "configs", "sweep_rope.py")
  runs, table = _sections(_sweep("--config", spec, "--workdir", "gs://b/Rope_Sweep", "--launcher", "k8s",
                                 "--launcher_args", "--image img --hosts 2 --gpus_per_host 8", "--dry_run"))
  assert len(runs) == len(ROPE_SWEEP)
  for index, ((title, text), (rope, lr)) in enumerate(zip(runs, ROPE_SWEEP)):
    name = f"rope_type={rope},learning_rate={lr}"
    assert title == f"run {index}: {name}"
    manifest = yaml.safe_load(text)
    assert manifest["kind"] == "JobSet" and manifest["metadata"]["name"] == f"rope-sweep-{index}"
    [container] = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "img" and container["command"] == _train_command(name, "gs://b/Rope_Sweep", rope, lr)
    assert text.rstrip().endswith("# submitted with: kubectl apply -f -")
  *polls, collect = [shlex.split(line) for line in table.splitlines()]
  assert [p[:4] for p in polls] == [["kubectl", "get", "jobset", f"rope-sweep-{i}"] for i in range(len(runs))]
  assert collect[-4:] == ["python", "launch/sweep.py", "--collect", "gs://b/Rope_Sweep"]


def test_slurm_sweep_dry_run_prints_every_script_and_a_table_job_after_them():
  spec = os.path.join(REPO, "configs", "sweep_rope.py")
  runs, table = _sections(_sweep("--config", spec, "--workdir", "/shared/sweep", "--launcher", "slurm",
                                 "--launcher_args", "--nodes 2 --partition gpu", "--dry_run"))
  for (title, script), (rope, lr) in zip(runs, ROPE_SWEEP):
    name = f"rope_type={rope},learning_rate={lr}"
    lines = script.splitlines()
    assert f"set -- {shlex.join(_train_command(name, '/shared/sweep', rope, lr))}" in lines
    for directive in ("--nodes=2", "--partition=gpu", f"--job-name={name}", f"--output=/shared/sweep/{name}/slurm-%j.log",
                      "--requeue", "--open-mode=append"):
      assert f"#SBATCH {directive}" in lines, directive
    assert lines[-1] == "sbatch --parsable"
  lines = table.splitlines()
  assert "set -- python launch/sweep.py --collect /shared/sweep" in lines
  dependency = "afterany:" + ":".join(f"JOB{i}" for i in range(len(runs)))
  assert f"#SBATCH --dependency={dependency}" in lines and "#SBATCH --nodes=1" in lines
  assert not any(line.startswith(("#SBATCH --gpus-per-node", "#SBATCH --exclusive")) for line in lines)


def test_tpu_sweep_dry_run_spreads_runs_over_slices():
  spec = os.path.join(REPO, "configs", "sweep_rope.py")
  runs, table = _sections(_sweep("--config", spec, "--workdir", "gs://b/sweep", "--launcher", "tpu_pod",
                                 "--launcher_args", "--name tpu-a,tpu-b --zone z --internal_ip", "--dry_run"))
  for index, ((_, text), (rope, lr)) in enumerate(zip(runs, ROPE_SWEEP)):
    commands = [shlex.split(line) for line in text.splitlines()]
    gcloud = [c for c in commands if c[0] == "gcloud"]
    assert {c[5] if c[4] != "scp" else c[-3].split(":")[0] for c in gcloud} == {("tpu-a", "tpu-b")[index % 2]}
    start = [c for c in gcloud if c[4] == "ssh" and "setsid" in c[-1]]
    assert len(start) == 1 and f"run{index}.pid" in start[0][-1] and "--internal-ip" in start[0]
    name = f"rope_type={rope},learning_rate={lr}"
    assert shlex.join(_train_command(name, "gs://b/sweep", rope, lr)) in start[0][-1].replace("'\"'\"'", "'")
  assert shlex.split(table.strip())[-2:] == ["--collect", "gs://b/sweep"]


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


def test_local_sweep_of_three_runs_goes_past_a_failed_run_and_ends_with_the_table(runner, tmp_path):
  # Two seeds of the shrunk tiny model and a third run whose init_from does not exist (valid as a config, it fails
  # when the run starts): the sweep runs all three, reports the failure and writes the table naming it.
  configs = _configs(tmp_path, seeds="  for seed in (0, 1):\n    add(seed=seed)\n"
                                     "  add(**{'seed': 2, 'train.init_from': '/nonexistent/llama'})\n")
  root = tmp_path / "sweep"
  flags = [f"--config.{key}={value}" for key, value in runner.overrides().items()]
  ran = _sweep("--config", f"{configs / 'seeds.py'}:steps=2", "--workdir", str(root), "--",
               *flags, env=runner.env)
  failed = "seed=2,init_from=_nonexistent_llama"
  assert ran.returncode == 1, ran.stderr[-3000:]
  assert f"sweep: 1 of 3 runs failed: {failed}" in ran.stderr
  assert sorted(os.listdir(root)) == sorted(["seed=0", "seed=1", failed, "sweep.csv", "sweep.md", "sweep_loss.png",
                                             "sweep_runs.json"])
  assert "train.init_from='/nonexistent/llama' is invalid" in (root / failed / "train.log").read_text()
  with open(root / "sweep.csv") as f:
    header, *rows = list(csv.reader(f))
  assert header[:5] == ["run", "status", "seed", "train.init_from", "step"] and header[-1] == "error"
  column = dict(zip(header, zip(*rows)))
  assert column["run"] == ("seed=0", "seed=1", failed) and column["status"] == ("done", "done", "failed")
  assert column["seed"] == ("0", "1", "2") and column["step"] == ("2", "2", "")
  assert column["error"][:2] == ("", "") and column["error"][2].startswith("error: train.init_from='/nonexistent/llama'")
  for name, loss in zip(column["run"][:2], column["loss"]):
    assert float(loss) == read_metrics(root / name)[-1]["loss"]
  assert column["loss"][0] != column["loss"][1]  # different seeds, different runs
  table = (root / "sweep.md").read_text().splitlines()
  assert table[0].startswith("| run | status | seed |") and len(table) == 5 and "| failed |" in table[4]
  assert table == ran.stdout.splitlines()[:5]  # the sweep printed the table it wrote
  assert (root / "sweep_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _write_run(directory, config: dict, metrics: list[dict], evals: dict | None = None) -> None:
  directory.mkdir(parents=True)
  (directory / "config.json").write_text(json.dumps(config))
  (directory / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
  for name, result in (evals or {}).items():
    (directory / "eval").mkdir(exist_ok=True)
    (directory / "eval" / f"{name}.json").write_text(json.dumps(result))


def test_collect_reads_metrics_evaluations_and_the_sweeps_record(tmp_path):
  root = tmp_path / "sweep"
  _write_run(root / "lr=0.001", {"train": {"learning_rate": 0.001, "num_steps": 4}},
             [{"step": 2, "loss": 3.0}, {"step": 4, "loss": 2.5, "eval_loss": 2.7}],
             {"perplexity_yarn": {"yarn": [{"length": 64, "perplexity": 12.5, "tokens": 640}]}})
  _write_run(root / "lr=0.003", {"train": {"learning_rate": 0.003, "num_steps": 4}}, [{"step": 2, "loss": 2.9}])
  (root / "sweep_runs.json").write_text(json.dumps({"runs": [
      {"name": "lr=0.001", "overrides": {"train.learning_rate": 0.001}, "status": "ok", "exit_code": 0},
      {"name": "lr=0.003", "overrides": {"train.learning_rate": 0.003}, "status": "submitted"},
      {"name": "lr=0.01", "overrides": {"train.learning_rate": 0.01}, "status": "failed", "exit_code": 1,
       "error": "error: a | b"}]}))
  collected = _sweep("--collect", str(root))
  assert collected.returncode == 0, collected.stderr
  with open(root / "sweep.csv") as f:
    header, *rows = list(csv.reader(f))
  assert header == ["run", "status", "train.learning_rate", "step", "loss", "eval_loss",
                    "perplexity_yarn ppl@64", "error"]
  assert rows == [["lr=0.001", "done", "0.001", "4", "2.5", "2.7", "12.5", ""],
                  ["lr=0.003", "incomplete", "0.003", "2", "2.9", "", "", ""],
                  ["lr=0.01", "failed", "0.01", "", "", "", "", "error: a | b"]]
  assert "error: a \\| b" in (root / "sweep.md").read_text()  # a table cell keeps its pipe


FAKE_SBATCH = """#!/usr/bin/env bash
# sbatch --parsable stand-in: keeps each script, fails a script that trains seed=2, prints job ids 100, 101, ...
script=$(cat)
n=$(ls "$SBATCH_DIR" | wc -l)
printf '%s\\n' "$script" > "$SBATCH_DIR/$n.sh"
case "$script" in *seed=2*) echo "sbatch: error: Batch job submission failed: Invalid account" >&2; exit 1 ;; esac
echo "$((100 + n));cluster"
"""

FAKE_KUBECTL = """#!/usr/bin/env bash
# kubectl stand-in: `apply -f -` accepts; `get jobset NAME-1` has Failed, the others Completed.
echo "$*" >> "$KUBECTL_LOG"
case "$1" in
  apply) cat > /dev/null ;;
  get) case "$3" in *-1) echo Failed ;; *) echo Completed ;; esac ;;
esac
"""


def _fake_bin(tmp_path, **scripts: str) -> dict:
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, text in scripts.items():
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_slurm_sweep_submits_past_a_failed_submission_then_a_table_job_after_the_others(tmp_path):
  configs = _configs(tmp_path, seeds="  for seed in (0, 1, 2, 3):\n    add(seed=seed)\n")
  (tmp_path / "sbatch").mkdir()
  env = {**_fake_bin(tmp_path, sbatch=FAKE_SBATCH), "SBATCH_DIR": str(tmp_path / "sbatch")}
  root = tmp_path / "sweep"
  ran = _sweep("--config", str(configs / "seeds.py"), "--workdir", str(root), "--launcher", "slurm",
               "--launcher_args", "--nodes 1", env=env)
  assert ran.returncode == 1 and "sweep: 1 of 4 runs failed: seed=2" in ran.stderr, ran.stderr
  scripts = [(tmp_path / "sbatch" / f"{i}.sh").read_text() for i in range(5)]
  assert "#SBATCH --dependency=afterany:100:101:103" in scripts[4].splitlines()
  assert "set -- python launch/sweep.py --collect " + str(root) in scripts[4].splitlines()
  with open(root / "sweep_runs.json") as f:
    records = json.load(f)["runs"]
  assert [(r["name"], r["status"], r.get("job")) for r in records] == [
      ("seed=0", "submitted", "100"), ("seed=1", "submitted", "101"), ("seed=2", "failed", None),
      ("seed=3", "submitted", "103")]
  assert records[2]["error"] == "sbatch: error: Batch job submission failed: Invalid account"
  assert all((root / f"seed={i}").is_dir() for i in range(4))  # SLURM opens each job's log there


def test_k8s_sweep_waits_for_every_jobset_then_writes_the_table(tmp_path):
  configs = _configs(tmp_path, seeds="  for seed in (0, 1, 2):\n    add(seed=seed)\n")
  env = {**_fake_bin(tmp_path, kubectl=FAKE_KUBECTL), "KUBECTL_LOG": str(tmp_path / "kubectl.log")}
  root = tmp_path / "sweep"
  ran = _sweep("--config", str(configs / "seeds.py"), "--workdir", str(root), "--launcher", "k8s",
               "--launcher_args", "--image i --hosts 1 --gpus_per_host 1", "--poll", "1", env=env)
  assert ran.returncode == 1 and "sweep: 1 of 3 runs failed: seed=1" in ran.stderr, ran.stderr
  calls = (tmp_path / "kubectl.log").read_text().splitlines()
  assert calls[:3] == ["apply -f -"] * 3 and [c.split()[:3] for c in calls[3:]] == [
      ["get", "jobset", f"sweep-{i}"] for i in range(3)]
  with open(root / "sweep.csv") as f:
    header, *rows = list(csv.reader(f))
  column = dict(zip(header, zip(*rows)))
  assert column["run"] == ("seed=0", "seed=1", "seed=2")
  assert column["status"] == ("no output", "failed", "no output")  # the fake pods wrote nothing
  assert column["error"][1].startswith("JobSet sweep-1: failed")


# `python` on the fake TPU workers: "trains" by writing config.json and metrics.jsonl into its --workdir (which
# slice ran it in `host`); a run with seed=2 fails the way a bad config value does.
FAKE_TRAIN = """#!PYTHON
import json, os, sys
args = sys.argv[1:]
workdir = args[args.index("--workdir") + 1]
seed = int(next(a.split("=")[1] for a in args if a.startswith("--config.seed=")))
if seed == 2:
  sys.exit("error: config.seed=2 is invalid: the fake worker refuses it")
os.makedirs(workdir)
with open(os.path.join(workdir, "config.json"), "w") as f:
  json.dump({"seed": seed, "host": os.path.basename(os.environ["HOME"]), "train": {"num_steps": 1}}, f)
with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
  f.write(json.dumps({"step": 1, "loss": 1.0 + seed}) + "\\n")
"""


def test_tpu_sweep_spreads_runs_over_slices_goes_past_a_failure_and_ends_with_the_table(tmp_path):
  from launch_fakes import write_fakes

  configs = _configs(tmp_path, seeds="  for seed in (0, 1, 2):\n    add(seed=seed)\n")
  env = _fake_bin(tmp_path, python=FAKE_TRAIN.replace("PYTHON", sys.executable))
  write_fakes(tmp_path / "bin")
  env.update({"FAKE_SLICES": str(tmp_path / "slices"), "FAKE_STATE": "", "GCLOUD_LOG": str(tmp_path / "gcloud.log"),
              "UV_LOG": str(tmp_path / "uv.log")})
  root = tmp_path / "sweep"
  slices = [f"s{os.getpid()}-{i}" for i in range(2)]  # the code's tarballs are /tmp/longjax-NAME.tgz
  ran = _sweep("--config", str(configs / "seeds.py"), "--workdir", str(root), "--launcher", "tpu_pod",
               "--launcher_args", f"--name {','.join(slices)} --zone z --accelerator_type v4-8 "
               "--runtime_version base --poll 1", env=env)
  assert ran.returncode == 1 and "sweep: 1 of 3 runs failed: seed=2" in ran.stderr, ran.stderr[-3000:]
  with open(root / "sweep.csv") as f:
    header, *rows = list(csv.reader(f))
  column = dict(zip(header, zip(*rows)))
  assert column["run"] == ("seed=0", "seed=1", "seed=2") and column["status"] == ("done", "done", "failed")
  assert column["host"] == (slices[0], slices[1], "")  # run i on slice i % 2, both slices at once
  assert column["loss"] == ("1.0", "2.0", "")
  assert "error: config.seed=2 is invalid" in column["error"][2]
  assert "| failed |" in (root / "sweep.md").read_text()
