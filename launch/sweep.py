"""Run a config file's sweep (its `get_sweep(add)`), then collect every run into one comparison table and plot.

  python launch/sweep.py --config configs/sweep_rope.py --workdir /tmp/sweep_rope [--dry_run] [-- --config.k=v ...]
  python launch/sweep.py --config configs/sweep_rope.py --workdir gs://bucket/sweep --launcher tpu_pod \
      --launcher_args "--name my-tpu --zone us-central2-b"
  python launch/sweep.py --collect /tmp/sweep_rope

Each run is `python -m longjax.train --config FILE[:arg] --workdir ROOT/NAME --config.KEY=VALUE ...` with
that run's overrides (NAME is made of them, e.g. rope_type=yarn,learning_rate=0.003), then the flags after
`--`, which every run gets. Launchers: local (one run after another here), print (the commands only),
tpu_pod (one after another on a slice: tpu_pod.py run --wait), slurm (one job per run), k8s (one JobSet
per run, named after ROOT and the run's index); --launcher_args go to the launcher. --dry_run prints what
would be executed. --collect reads every ROOT/*/config.json, metrics.jsonl and eval/*.json and writes
ROOT/sweep.md, ROOT/sweep.csv (the config keys that differ between runs, final metrics, evaluation
results) and ROOT/sweep_loss.png (loss curves).
"""

import csv
import glob
import json
import math
import os
import re
import shlex
import subprocess
import sys

from common import REPO, Parser, dns_label, execute, fail, split_command

sys.path.insert(1, REPO)  # this checkout's longjax, as `python -m longjax.train` run from it imports

from longjax.config import EVAL_TASKS, ConfigError, from_config_dict, load_file, load_sweep  # noqa: E402

LAUNCHERS = ("local", "print", "tpu_pod", "slurm", "k8s")
# Per-step values that say nothing about how a finished run compares.
NOT_COMPARED = ("step", "step_loss", "learning_rate", "grad_norm")


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


def commands(args, runs, extra: list[str]) -> list[list[str]]:
  """One command per run: the training command, or the launcher invocation that runs it."""
  python = sys.executable if args.launcher == "local" else "python"
  root = os.path.abspath(args.workdir) if args.launcher == "local" and "://" not in args.workdir else args.workdir
  launcher_args = shlex.split(args.launcher_args)
  # JobSet names: the root's last part and the run's index (a run's own name is no valid Kubernetes name).
  jobset = re.sub(r"[^a-z0-9-]", "-", os.path.basename(args.workdir.rstrip("/")).lower()).strip("-")[:30] or "sweep"
  result = []
  for index, (name, overrides) in enumerate(runs):
    train = [python, "-m", "longjax.train", "--config", _relative_spec(args.config), "--workdir",
             f"{root.rstrip('/')}/{name}", *[f"--config.{k}={_flag_value(v)}" for k, v in overrides.items()], *extra]
    if args.launcher in ("local", "print"):
      result.append(train)
    elif args.launcher == "tpu_pod":  # --wait: the runs share the slice, one after another
      result.append([*_launcher("tpu_pod"), "run", *launcher_args, "--run_name", f"run{index}", "--wait", "--", *train])
    elif args.launcher == "slurm":
      result.append([*_launcher("slurm"), *launcher_args, "--job_name", name, "--", *train])
    else:
      result.append([*_launcher("k8s"), *launcher_args, "--name", dns_label(f"{jobset}-{index}", "name"), "--", *train])
  return result


def _run_locally(command_lines: list[list[str]]) -> int:
  """Each run in turn from the checkout's root; a failed run is reported and the others still run."""
  failed = []
  for command in command_lines:
    print(f"+ {shlex.join(command)}", file=sys.stderr, flush=True)
    if subprocess.run(command, cwd=REPO).returncode:
      failed.append(command[command.index("--workdir") + 1])
  if failed:
    print(f"sweep: {len(failed)} of {len(command_lines)} runs failed: {', '.join(failed)}", file=sys.stderr)
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


def eval_scalars(path: str) -> dict[str, float]:
  """The headline numbers of one `python -m longjax.evaluate` result file (WORKDIR/eval/<task>_<name>.json)."""
  stem = os.path.basename(path)[:-len(".json")]
  task = next((t for t in sorted(EVAL_TASKS, key=len, reverse=True) if stem.startswith(t + "_")), None)
  with open(path) as f:
    data = json.load(f)
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


def read_run(directory: str) -> dict:
  """A run's config (flattened), loss curve, last value of each metric, and evaluation results."""
  config = {}
  if os.path.exists(os.path.join(directory, "config.json")):
    with open(os.path.join(directory, "config.json")) as f:
      config = _flatten(json.load(f))
  curve, last = [], {}
  if os.path.exists(os.path.join(directory, "metrics.jsonl")):
    with open(os.path.join(directory, "metrics.jsonl")) as f:
      for line in filter(str.strip, f):
        record = json.loads(line)
        if record.get("loss") is not None:
          curve.append((record["step"], record["loss"]))
        last.update({k: v for k, v in record.items() if v is not None})
  results = {}
  for path in sorted(glob.glob(os.path.join(directory, "eval", "*.json"))):
    results.update(eval_scalars(path))
  return {"name": os.path.basename(directory), "config": config, "curve": curve, "last": last, "eval": results}


def collect(root: str) -> tuple[list[str], list[list]]:
  """(header, rows) of every run under `root`; also writes sweep.md, sweep.csv and sweep_loss.png there."""
  directories = sorted(d for d in glob.glob(os.path.join(root, "*"))
                       if os.path.exists(os.path.join(d, "config.json")) or
                       os.path.exists(os.path.join(d, "metrics.jsonl")))
  if not directories:
    raise ConfigError(f"--collect {root!r} is invalid: no run directory (with config.json or metrics.jsonl) in it")
  runs = [read_run(d) for d in directories]
  keys = list(dict.fromkeys(k for run in runs for k in run["config"]))
  swept = [k for k in keys if len({repr(run["config"].get(k)) for run in runs}) > 1]
  metrics = [k for k in dict.fromkeys(k for run in runs for k in run["last"]) if k not in NOT_COMPARED]
  evals = list(dict.fromkeys(k for run in runs for k in run["eval"]))
  header = ["run", *swept, "step", *metrics, *evals]
  rows = [[run["name"], *[run["config"].get(k) for k in swept], run["last"].get("step"),
           *[run["last"].get(k) for k in metrics], *[run["eval"].get(k) for k in evals]] for run in runs]
  with open(os.path.join(root, "sweep.csv"), "w", newline="") as f:
    csv.writer(f).writerows([header, *[["" if v is None else v for v in row] for row in rows]])
  with open(os.path.join(root, "sweep.md"), "w") as f:
    f.write(markdown(header, rows))
  _plot(runs, os.path.join(root, "sweep_loss.png"))
  return header, rows


def _cell(value) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return f"{value:.4g}" if math.isfinite(value) else str(value)
  return str(value)


def markdown(header: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def _plot(runs: list[dict], path: str) -> None:
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
  axes.set_title(f"{len(runs)} runs of {os.path.basename(os.path.dirname(path).rstrip('/')) or path}")
  axes.grid(alpha=0.3)
  axes.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def main(argv: list[str]) -> int:
  own, extra = split_command(argv)
  parser = Parser(prog="sweep.py", description=__doc__.splitlines()[0])
  parser.add_argument("--config", help="a config file with get_sweep(add), FILE[:arg]")
  parser.add_argument("--workdir", help="the sweep's root: each run writes ROOT/NAME")
  parser.add_argument("--launcher", default="local", choices=LAUNCHERS)
  parser.add_argument("--launcher_args", default="", help="arguments for the launcher, as one string")
  parser.add_argument("--dry_run", action="store_true", help="print the commands instead of running them")
  parser.add_argument("--collect", metavar="ROOT", help="write ROOT's comparison table and plot instead")
  args = parser.parse_args(own)
  try:
    if args.collect:
      if args.config or extra:
        fail("--collect takes no --config and no flags after --")
      header, rows = collect(args.collect)
      print(markdown(header, rows), end="")
      print(f"wrote {os.path.join(args.collect, 'sweep.md')}, sweep.csv and sweep_loss.png")
      return 0
    if not args.config or not args.workdir:
      fail("give --config FILE[:arg] and --workdir ROOT (or --collect ROOT)")
    if args.launcher in ("local", "print") and args.launcher_args:
      fail(f"--launcher_args is for the tpu_pod, slurm and k8s launchers, not {args.launcher}")
    runs = expand(args.config, args.workdir)
  except ConfigError as e:
    fail(str(e))
  command_lines = commands(args, runs, extra)
  if args.launcher == "print" or args.dry_run:
    return execute(command_lines, dry_run=True)
  if args.launcher == "local":
    return _run_locally(command_lines)
  return execute(command_lines, dry_run=False)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
