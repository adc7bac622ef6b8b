"""Run a config file's sweep (its `get_sweep(add)`) on any launcher, then one comparison table and plot of every run.

  python launch/sweep.py --config configs/sweep_rope.py --workdir /tmp/sweep_rope [--parallel 2] [-- --config.k=v ...]
  python launch/sweep.py --config configs/sweep_rope.py --workdir gs://bucket/sweep --launcher tpu_pod \
      --launcher_args "--name tpu-a,tpu-b --zone us-central2-b --accelerator_type v4-8 --runtime_version \
      tpu-ubuntu2204-base --spot"
  python launch/sweep.py --config ... --workdir /shared/sweep --launcher slurm --launcher_args "--nodes 1"
  python launch/sweep.py --config ... --workdir gs://bucket/sweep --launcher k8s --launcher_args "--image I --hosts 1 ..."
  python launch/sweep.py --collect /tmp/sweep_rope

Each run is `python -m longjax.train --config FILE[:arg] --workdir ROOT/NAME --config.KEY=VALUE ...` with
that run's overrides (NAME is made of them, e.g. rope_type=yarn,learning_rate=0.003), then the flags after
`--`, which every run gets. Launchers: local (here, --parallel at a time, each run's output in
ROOT/NAME/train.log), print (the training commands only), tpu_pod (`tpu_pod.py submit` per run: the slices
of --name a,b,... in parallel, one run after another on each, a preempted slice recreated and the run
resumed), slurm (one requeueable job per run, all queued at once, and a CPU job that builds the table after
them), k8s (one JobSet per run, named after ROOT and the run's index, all applied at once and polled until
Completed or Failed); --launcher_args go to the launcher. A failed run is reported and the others go on.
The sweep ends by writing ROOT/sweep_runs.json (how each run ended) and the table: --collect reads every
ROOT/*/config.json, metrics.jsonl and eval/*.json and writes ROOT/sweep.md, ROOT/sweep.csv (each run's
status, and error if it failed, the config keys that differ between runs, final metrics, evaluation results)
and ROOT/sweep_loss.png (loss curves). --dry_run prints the exact commands, scripts and manifests each
launcher would execute, run by run, then the table's.
"""

import concurrent.futures
import csv
import io
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time

from common import REPO, Parser, dns_label, execute, fail, split_command

sys.path.insert(1, REPO)  # this checkout's longjax, as `python -m longjax.train` run from it imports

from etils import epath  # noqa: E402 - local paths and gs:// alike

from longjax.config import EVAL_TASKS, ConfigError, from_config_dict, load_file, load_sweep  # noqa: E402

LAUNCHERS = ("local", "print", "tpu_pod", "slurm", "k8s")
# Per-step values that say nothing about how a finished run compares.
NOT_COMPARED = ("step", "step_loss", "learning_rate", "grad_norm")
STATUS_FILE = "sweep_runs.json"


def _flag_value(value) -> str:
  """A value as ml_collections parses it back from `--config.key=value`."""
  if isinstance(value, (tuple, list)):
    return "(" + ", ".join(_flag_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return repr(value) if isinstance(value, float) else str(value)


def _name_value(value) -> str:
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, (tuple, list)):
    return "-".join(_name_value(v) for v in value)
  return re.sub(r"[^A-Za-z0-9._+-]", "_", str(value))


def run_names(runs: list[dict]) -> list[str]:
  """key=value,key=value of each run's overrides, a key shortened to its last part where that stays unique."""
  keys = list(dict.fromkeys(key for run in runs for key in run))
  short = {key: key.rsplit(".", 1)[-1] for key in keys}
  shared = {name for name in short.values() if list(short.values()).count(name) > 1}
  label = {key: key if short[key] in shared else short[key] for key in keys}
  names = [",".join(f"{label[k]}={_name_value(v)}" for k, v in run.items()) or "base" for run in runs]
  for name in names:
    if names.count(name) > 1:
      raise ConfigError(f"sweep: two runs are both {name!r}; every add() call must override different values")
  return names


def _set(config, key: str, value, index: int) -> None:
  *parents, name = key.split(".")
  try:
    for parent in parents:
      config = getattr(config, parent)
    if name not in config:
      raise AttributeError(name)
    setattr(config, name, value)
  except (AttributeError, KeyError):
    raise ConfigError(f"sweep run {index}: unknown config key {key!r}; every key is listed in configs/base.py"
                      ) from None
  except TypeError as e:
    raise ConfigError(f"sweep run {index}: {key}={value!r} is invalid: {e}") from None


def expand(spec: str, root: str) -> list[tuple[str, dict]]:
  """(name, overrides) of every run of the config file's sweep, each validated as a whole config."""
  runs = load_sweep(spec)
  for index, overrides in enumerate(runs):
    if not all(isinstance(key, str) and "." in key or key == "seed" for key in overrides):
      raise ConfigError(f"sweep run {index}: overrides {sorted(overrides)} must be dotted config keys, "
                        "e.g. add(**{'train.learning_rate': 1e-3})")
    config = load_file(spec)
    for key, value in overrides.items():
      _set(config, key, value, index)
    try:
      from_config_dict(config)
    except ConfigError as e:
      raise ConfigError(f"sweep run {index}: {e}") from None
  return list(zip(run_names(runs), runs))


def _relative_spec(spec: str) -> str:
  """The config file as seen from the checkout's root (where every launcher runs the command)."""
  path, sep, arg = spec.partition(":")
  path = os.path.abspath(path)
  inside = os.path.commonpath([path, REPO]) == REPO
  return (os.path.relpath(path, REPO) if inside else path) + sep + arg


def _launcher(name: str) -> list[str]:
  return [sys.executable, os.path.join(REPO, "launch", f"{name}.py")]


def _jobset_prefix(workdir: str) -> str:
  """JobSet names: the root's last part and the run's index (a run's own name is no valid Kubernetes name)."""
  return re.sub(r"[^a-z0-9-]", "-", os.path.basename(workdir.rstrip("/")).lower()).strip("-")[:30] or "sweep"


def _slices(launcher_args: list[str]) -> list[str]:
  """The TPU slices of `--name a,b,c` (runs are spread over them, one after another on each)."""
  for i, arg in enumerate(launcher_args):
    if arg == "--name" and i + 1 < len(launcher_args):
      return launcher_args[i + 1].split(",")
    if arg.startswith("--name="):
      return arg.split("=", 1)[1].split(",")
  fail("--launcher tpu_pod needs --name SLICE[,SLICE...] in --launcher_args")


def _without_name(launcher_args: list[str]) -> list[str]:
  result, skip = [], False
  for arg in launcher_args:
    if skip:
      skip = False
    elif arg == "--name":
      skip = True
    elif not arg.startswith("--name="):
      result.append(arg)
  return result


def root_of(args) -> str:
  return os.path.abspath(args.workdir) if "://" not in args.workdir else args.workdir.rstrip("/")


def commands(args, runs, extra: list[str]) -> list[dict]:
  """One job per run: its name, training command, the launcher command that runs it, and its lane (jobs of
  one lane run one after another: a TPU slice; local runs each have their own)."""
  python = sys.executable if args.launcher == "local" else "python"
  root = root_of(args)
  launcher_args = shlex.split(args.launcher_args)
  slices = _slices(launcher_args) if args.launcher == "tpu_pod" else []
  jobs = []
  for index, (name, overrides) in enumerate(runs):
    train = [python, "-m", "longjax.train", "--config", _relative_spec(args.config), "--workdir", f"{root}/{name}",
             *[f"--config.{k}={_flag_value(v)}" for k, v in overrides.items()], *extra]
    job = {"index": index, "name": name, "overrides": overrides, "train": train, "command": train, "lane": index}
    if args.launcher == "tpu_pod":
      tpu = slices[index % len(slices)]
      job["lane"] = tpu
      job["command"] = [*_launcher("tpu_pod"), "submit", "--name", dns_label(tpu, "--name"),
                        *_without_name(launcher_args), "--run_name", f"run{index}", "--", *train]
    elif args.launcher == "slurm":
      job["command"] = [*_launcher("slurm"), *launcher_args, "--job_name", name, "--output",
                        f"{root}/{name}/slurm-%j.log", "--", *train]
    elif args.launcher == "k8s":
      job["jobset"] = dns_label(f"{_jobset_prefix(args.workdir)}-{index}", "name")
      job["command"] = [*_launcher("k8s"), *launcher_args, "--name", job["jobset"], "--", *train]
    jobs.append(job)
  return jobs


def collect_command(args) -> list[str]:
  return ["python", "launch/sweep.py", "--collect", root_of(args)]


def _slurm_collect(args, job_ids: list[str]) -> list[str]:
  """The CPU-only SLURM job that builds the table once every run's job has ended (however it ended)."""
  dependency = "afterany:" + ":".join(job_ids) if job_ids else ""
  return [*_launcher("slurm"), *shlex.split(args.launcher_args), "--nodes", "1", "--gpus_per_node", "0",
          "--job_name", "sweep-collect", "--output", f"{root_of(args)}/sweep-collect-%j.log",
          *(["--dependency", dependency] if dependency else []), "--",
          *collect_command(args)]


def dry_run(args, jobs: list[dict]) -> int:
  """Print, run by run, the exact commands (scripts, manifests) that each launcher would execute, then the table's."""
  for job in jobs:
    print(f"# ==== run {job['index']}: {job['name']}")
    if args.launcher == "local":
      print(f"cd {shlex.quote(REPO)} && {shlex.join(job['command'])} > {shlex.quote(_log_path(args, job))} 2>&1")
      continue
    dash = job["command"].index("--")
    proc = subprocess.run([*job["command"][:dash], "--dry_run", *job["command"][dash:]], capture_output=True,
                          text=True)
    if proc.returncode:
      sys.stderr.write(proc.stderr)
      return proc.returncode
    print(proc.stdout, end="")
  print("# ==== then the table, once every run has ended")
  if args.launcher == "slurm":
    command = _slurm_collect(args, [f"JOB{job['index']}" for job in jobs])  # JOBn: the id sbatch prints
    dash = command.index("--")
    proc = subprocess.run([*command[:dash], "--dry_run", *command[dash:]], capture_output=True, text=True)
    print(proc.stdout, end="")
    return proc.returncode
  if args.launcher == "k8s":
    for job in jobs:
      print(shlex.join(_jobset_status(job["jobset"], args)))
  print(f"cd {shlex.quote(REPO)} && {shlex.join(collect_command(args))}")
  return 0


def _log_path(args, job: dict) -> str:
  return f"{root_of(args)}/{job['name']}/train.log"


def _last_error(text: str) -> str:
  """The line that says why a run failed: its last `error: ...` line, else its last line."""
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith("error:") or "Error:" in line]
  return (errors or lines or [""])[-1][:300]


def _run_job(args, job: dict) -> dict:
  """Run one job to its end; its status record for sweep_runs.json."""
  if args.launcher == "local" and "://" not in args.workdir:  # the log grows as the run goes (tail -f it)
    log = _log_path(args, job)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "w") as f:
      code = subprocess.run(job["command"], cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
    with open(log) as f:
      output = f.read()
  elif args.launcher == "local":  # a gs:// root: the log is written when the run ends
    proc = subprocess.run(job["command"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    code, output = proc.returncode, proc.stdout
    log = epath.Path(_log_path(args, job))
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(output)
  else:
    if args.launcher == "slurm":  # SLURM opens the job's log in the run's directory, which must exist
      os.makedirs(f"{root_of(args)}/{job['name']}", exist_ok=True)
    proc = subprocess.run(job["command"], cwd=REPO, capture_output=True, text=True)
    code, output = proc.returncode, proc.stdout + proc.stderr
    sys.stderr.write("".join(f"[{job['name']}] {line}\n" for line in output.splitlines()[-20:]))
  record = {"name": job["name"], "overrides": job["overrides"], "exit_code": code,
            "status": "failed" if code else "ok"}
  if code:
    record["error"] = _last_error(output)
  if args.launcher == "slurm" and not code:  # sbatch --parsable's last line: JOBID[;CLUSTER]
    record["job"] = proc.stdout.strip().splitlines()[-1].split(";")[0] if proc.stdout.strip() else ""
    record["status"] = "submitted"
  if args.launcher == "k8s" and not code:
    record["status"], record["jobset"] = "submitted", job["jobset"]
  print(f"sweep: {job['name']}: {record['status']}" + (f" (exit {code}): {record['error']}" if code else ""),
        file=sys.stderr, flush=True)
  return record


def run_jobs(args, jobs: list[dict]) -> list[dict]:
  """Every job, lanes in parallel (TPU slices; locally at most --parallel), one after another within a lane; a
  failed job is recorded and the others still run."""
  lanes: dict = {}
  for job in jobs:
    lanes.setdefault(job["lane"], []).append(job)
  # TPU slices work at once; SLURM and Kubernetes submissions return at once, so in order is as fast.
  width = {"local": args.parallel, "tpu_pod": len(lanes)}.get(args.launcher, 1)
  records: dict[int, dict] = {}
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, width)) as pool:
    def lane_runner(lane_jobs):
      for job in lane_jobs:
        records[job["index"]] = _run_job(args, job)
    list(pool.map(lane_runner, lanes.values()))
  return [records[job["index"]] for job in jobs]


def _jobset_status(name: str, args) -> list[str]:
  launcher_args = shlex.split(args.launcher_args)
  namespace = [a for i, a in enumerate(launcher_args) if i and launcher_args[i - 1] == "--namespace"]
  return ["kubectl", "get", "jobset", name, *(["--namespace", namespace[0]] if namespace else []), "-o",
          "jsonpath={.status.conditions[?(@.status==\"True\")].type}"]


def wait_for_jobsets(args, records: list[dict]) -> None:
  """Poll each submitted JobSet until it is Completed or Failed, and record which."""
  pending = [r for r in records if r["status"] == "submitted"]
  while pending:
    for record in list(pending):
      proc = subprocess.run(_jobset_status(record["jobset"], args), capture_output=True, text=True)
      conditions = proc.stdout.split()
      if proc.returncode or "Completed" in conditions or "Failed" in conditions:
        record["status"] = "ok" if "Completed" in conditions else "failed"
        if record["status"] == "failed":
          why = _last_error(proc.stderr) if proc.returncode else "failed"
          record["error"] = f"JobSet {record['jobset']}: {why} (kubectl describe jobset {record['jobset']})"
        print(f"sweep: {record['name']}: {record['status']}", file=sys.stderr, flush=True)
        pending.remove(record)
    if pending:
      time.sleep(args.poll)


def write_status(root: str, records: list[dict]) -> None:
  """ROOT/sweep_runs.json: how each run ended (or its job id), which --collect puts in the table."""
  text = json.dumps({"runs": records}, indent=1, default=str) + "\n"
  path = epath.Path(root) / STATUS_FILE
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  except Exception as e:  # noqa: BLE001 - e.g. no gs:// support here: the record still reaches the user
    print(f"sweep: could not write {path} ({type(e).__name__}: {e}); it would have been:\n{text}", file=sys.stderr)


def _finish(records: list[dict]) -> int:
  failed = [r["name"] for r in records if r["status"] == "failed"]
  if failed:
    print(f"sweep: {len(failed)} of {len(records)} runs failed: {', '.join(failed)}", file=sys.stderr)
  return 1 if failed else 0


# ---- collect ----

def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
  return flat


def _path(path) -> epath.Path:
  """A local path or a URL (gs://bucket/sweep) as an epath.Path; --collect reads and writes both alike."""
  return epath.Path(path)


def eval_scalars(path) -> dict[str, float]:
  """The headline numbers of one `python -m longjax.evaluate` result file (WORKDIR/eval/<task>_<name>.json)."""
  path = _path(path)
  stem = path.name[:-len(".json")]
  task = next((t for t in sorted(EVAL_TASKS, key=len, reverse=True) if stem.startswith(t + "_")), None)
  data = json.loads(path.read_text())
  if task == "perplexity":
    return {f"{stem} ppl@{r['length']}": r["perplexity"] for results in data.values() for r in results if r["tokens"]}
  if task in ("passkey", "needle"):
    return {f"{stem} accuracy": data["mean_accuracy"]}
  if task == "ruler":
    scores = [v for by_length in data["scores"].values() for v in by_length.values()]
    return {f"{stem} mean": sum(scores) / len(scores)} if scores else {}
  if task == "loss_by_position":
    return {f"{stem} {method} last-bin loss": curve["loss"][-1] for method, curve in data.items()}
  return {}  # kv_cache: sizes, not a comparison of runs


def read_run(directory) -> dict:
  """A run's config (flattened), loss curve, last value of each metric, and evaluation results."""
  directory = _path(directory)
  config = {}
  if (directory / "config.json").exists():
    config = _flatten(json.loads((directory / "config.json").read_text()))
  curve, last = [], {}
  if (directory / "metrics.jsonl").exists():
    for line in filter(str.strip, (directory / "metrics.jsonl").read_text().splitlines()):
      record = json.loads(line)
      if record.get("loss") is not None:
        curve.append((record["step"], record["loss"]))
      last.update({k: v for k, v in record.items() if v is not None})
  results = {}
  for path in sorted(directory.glob("eval/*.json"), key=str):
    results.update(eval_scalars(path))
  return {"name": directory.name, "config": config, "curve": curve, "last": last, "eval": results}


def _statuses(root: str) -> dict[str, dict]:
  """ROOT/sweep_runs.json's record of each run, by name ({} when the sweep did not write one)."""
  path = _path(root) / STATUS_FILE
  if not path.exists():
    return {}
  return {record["name"]: record for record in json.loads(path.read_text())["runs"]}


def _status(run: dict, record: dict | None) -> str:
  """failed (from the sweep's record), done (its last logged step is its num_steps), incomplete, or no output."""
  if record and record["status"] == "failed":
    return "failed"
  if not run["last"]:
    return "no output"
  num_steps = run["config"].get("train.num_steps")
  return "done" if num_steps is None or run["last"].get("step", -1) >= num_steps else "incomplete"


def collect(root: str) -> tuple[list[str], list[list]]:
  """(header, rows) of every run under `root`; also writes sweep.md, sweep.csv and sweep_loss.png there."""
  statuses = _statuses(root)
  top = _path(root)
  children = sorted(top.iterdir(), key=str) if top.is_dir() else []
  directories = [d for d in children if (d / "config.json").exists() or (d / "metrics.jsonl").exists() or
                 d.name in statuses]
  if not directories and not statuses:
    raise ConfigError(f"--collect {root!r} is invalid: no run directory (with config.json or metrics.jsonl) in it")
  runs = [read_run(d) for d in directories]
  present = {run["name"] for run in runs}
  runs += [{"name": name, "config": {}, "curve": [], "last": {}, "eval": {}} for name in statuses if name not in present]
  order = list(statuses)  # the sweep's order, then runs it did not record
  runs.sort(key=lambda run: (order.index(run["name"]) if run["name"] in order else len(order), run["name"]))
  for run in runs:
    record = statuses.get(run["name"])
    run["status"] = _status(run, record)
    run["error"] = record.get("error", "") if record and run["status"] == "failed" else ""
    if record:  # a run that failed before writing config.json still shows its overrides
      run["config"] = {**{k: tuple(v) if isinstance(v, list) else v for k, v in record["overrides"].items()},
                       **run["config"]}
  keys = list(dict.fromkeys(k for run in runs for k in run["config"]))
  # A key is compared among the runs that know it (a run that failed early knows only its overrides).
  swept = [k for k in keys if len({repr(run["config"][k]) for run in runs if k in run["config"]}) > 1 or
           any(k in record["overrides"] for record in statuses.values())]
  metrics = [k for k in dict.fromkeys(k for run in runs for k in run["last"]) if k not in NOT_COMPARED]
  evals = list(dict.fromkeys(k for run in runs for k in run["eval"]))
  errors = any(run["error"] for run in runs)
  header = ["run", "status", *swept, "step", *metrics, *evals, *(["error"] if errors else [])]
  rows = [[run["name"], run["status"], *[run["config"].get(k) for k in swept], run["last"].get("step"),
           *[run["last"].get(k) for k in metrics], *[run["eval"].get(k) for k in evals],
           *([run["error"]] if errors else [])] for run in runs]
  table = io.StringIO(newline="")
  csv.writer(table).writerows([header, *[["" if v is None else v for v in row] for row in rows]])
  (top / "sweep.csv").write_text(table.getvalue())
  (top / "sweep.md").write_text(markdown(header, rows))
  _plot(runs, top / "sweep_loss.png")
  return header, rows


def _cell(value) -> str:
  if value is None:
    return ""
  if isinstance(value, str):
    return value.replace("|", "\\|")
  if isinstance(value, float):
    return f"{value:.4g}" if math.isfinite(value) else str(value)
  return str(value)


def markdown(header: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def _plot(runs: list[dict], path: epath.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  figure, axes = plt.subplots(figsize=(7, 4.5))
  for run in runs:
    if run["curve"]:
      steps, losses = zip(*run["curve"])
      axes.plot(steps, losses, marker="." if len(steps) < 20 else None, label=run["name"])
  axes.set_xlabel("step")
  axes.set_ylabel("training loss (nats/token)")
  axes.set_title(f"{len(runs)} runs of {path.parent.name or path}")
  axes.grid(alpha=0.3)
  axes.legend(fontsize=7)
  figure.tight_layout()
  image = io.BytesIO()
  figure.savefig(image, format="png", dpi=120)
  plt.close(figure)
  path.write_bytes(image.getvalue())


def _report(root: str) -> None:
  header, rows = collect(root)
  print(markdown(header, rows), end="")
  print(f"wrote {_path(root) / 'sweep.md'}, sweep.csv and sweep_loss.png")


def main(argv: list[str]) -> int:
  own, extra = split_command(argv)
  parser = Parser(prog="sweep.py", description=__doc__.splitlines()[0])
  parser.add_argument("--config", help="a config file with get_sweep(add), FILE[:arg]")
  parser.add_argument("--workdir", help="the sweep's root: each run writes ROOT/NAME")
  parser.add_argument("--launcher", default="local", choices=LAUNCHERS)
  parser.add_argument("--launcher_args", default="", help="arguments for the launcher, as one string")
  parser.add_argument("--parallel", type=int, default=1, help="local runs at once")
  parser.add_argument("--poll", type=int, default=60, help="seconds between looks at submitted JobSets")
  parser.add_argument("--dry_run", action="store_true", help="print the exact commands instead of running them")
  parser.add_argument("--collect", metavar="ROOT", help="write ROOT's comparison table and plot instead")
  args = parser.parse_args(own)
  try:
    if args.collect:
      if args.config or extra:
        fail("--collect takes no --config and no flags after --")
      _report(args.collect)
      return 0
    if not args.config or not args.workdir:
      fail("give --config FILE[:arg] and --workdir ROOT (or --collect ROOT)")
    if args.launcher in ("local", "print") and args.launcher_args:
      fail(f"--launcher_args is for the tpu_pod, slurm and k8s launchers, not {args.launcher}")
    if args.parallel < 1:
      fail(f"--parallel={args.parallel} is invalid: must be >= 1")
    runs = expand(args.config, args.workdir)
  except ConfigError as e:
    fail(str(e))
  jobs = commands(args, runs, extra)
  if args.launcher == "print":
    return execute([job["train"] for job in jobs], dry_run=True)
  if args.dry_run:
    return dry_run(args, jobs)
  records = run_jobs(args, jobs)
  root = root_of(args)
  if args.launcher == "k8s":
    wait_for_jobsets(args, records)
  write_status(root, records)
  if args.launcher == "slurm":  # the runs are queued: a last job builds the table when they have all ended
    ids = [r["job"] for r in records if r.get("job")]
    status = execute([_slurm_collect(args, ids)], dry_run=False)
    print(f"sweep: {len(ids)} jobs submitted; the table will be {root}/sweep.md (job sweep-collect)")
    return _finish(records) or status
  try:
    _report(root)
  except ConfigError as e:
    print(f"sweep: no table: {e}", file=sys.stderr)
  return _finish(records)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
