"""Submit a longjax command to SLURM on N GPU nodes: launch/gpu_slurm.sbatch, rendered with the command inside.

  python launch/slurm.py --nodes 4 [--gpus_per_node 8] [--cpus_per_task 16] [--partition p] [--time 24:00:00] \
      [--account a] [--dry_run] -- python -m longjax.train --config configs/llama2_7b.py --workdir /shared/runs/llama2

The rendered script runs from this checkout (`--chdir`), starts one task per node with srun, and each task
joins the others through jax.distributed.initialize(), which reads SLURM's variables. The job is requeueable:
--signal_lead seconds before the time limit every process saves a checkpoint and the job requeues itself, and
resumes from its workdir; its log is appended to across starts. --dry_run prints the script and the sbatch
command that reads it from stdin, instead of submitting; submitting prints the job id (sbatch --parsable).
"""

import os
import re
import shlex
import sys

from common import REPO, Parser, execute, fail, split_command

TEMPLATE = os.path.join(REPO, "launch", "gpu_slurm.sbatch")
SUBMIT = ["sbatch", "--parsable"]  # reads the job script from stdin; prints the job id
SUBMITTED_WITH = "# ---- submitted with:"


def render(template: str, directives: dict[str, str], command: list[str], environment: dict[str, str]) -> str:
  """The template with its `#SBATCH --key` lines set to `directives` (new keys after the last one, a None value
  removes the key) and the command (and exported variables) placed before the script's first use of its
  arguments."""
  lines = template.splitlines()
  pending = dict(directives)
  last = 0
  for i, line in enumerate(lines):
    match = re.match(r"#SBATCH --([\w-]+)", line)
    if match:
      last = i
      if match.group(1) in pending:
        value = pending.pop(match.group(1))
        lines[i] = None if value is None else f"#SBATCH --{match.group(1)}={value}"
  lines[last + 1:last + 1] = [f"#SBATCH --{key}={value}" for key, value in pending.items() if value is not None]
  lines = [line for line in lines if line is not None]
  start = lines.index("set -euo pipefail") + 1
  lines[start:start] = [f"export {key}={shlex.quote(value)}" for key, value in environment.items()] + [
      f"set -- {shlex.join(command)}"]
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
  own, command = split_command(argv)
  parser = Parser(prog="slurm.py", description=__doc__.splitlines()[0])
  parser.add_argument("--nodes", type=int, required=True)
  parser.add_argument("--gpus_per_node", type=int, default=8, help="0: a CPU-only job (e.g. a sweep's table)")
  parser.add_argument("--cpus_per_task", type=int, default=16, help="CPUs of the one task a node runs")
  parser.add_argument("--signal_lead", type=int, default=300,
                      help="seconds before the time limit at which training saves and the job requeues itself")
  parser.add_argument("--output", default="", help="the log file (default %%x-%%j.log in the checkout)")
  parser.add_argument("--dependency", default="", help="sbatch --dependency, e.g. afterany:123:124")
  parser.add_argument("--job_name", default="longjax")
  parser.add_argument("--partition", default="")
  parser.add_argument("--time", default="", help="wall-clock limit, e.g. 24:00:00")
  parser.add_argument("--account", default="")
  parser.add_argument("--venv", default="", help="the venv on the nodes (default: .venv of this checkout)")
  parser.add_argument("--dry_run", action="store_true", help="print the script and the sbatch command")
  args = parser.parse_args(own)
  if not command:
    fail("slurm.py: give the command after --, e.g. -- python -m longjax.train --config ... --workdir ...")
  for name in ("nodes", "cpus_per_task"):
    if getattr(args, name) < 1:
      fail(f"--{name}={getattr(args, name)} is invalid: must be >= 1")
  for name in ("gpus_per_node", "signal_lead"):
    if getattr(args, name) < 0:
      fail(f"--{name}={getattr(args, name)} is invalid: must be >= 0")
  cpu_only = args.gpus_per_node == 0  # no GPUs asked for, and the node is not taken whole
  directives = {"nodes": str(args.nodes), "gpus-per-node": None if cpu_only else str(args.gpus_per_node),
                **({"exclusive": None} if cpu_only else {}), "cpus-per-task": str(args.cpus_per_task),
                "signal": f"B:USR1@{args.signal_lead}", "job-name": args.job_name, "chdir": REPO,
                **{key: value for key, value in (("partition", args.partition), ("time", args.time),
                                                 ("account", args.account), ("output", args.output),
                                                 ("dependency", args.dependency)) if value}}
  with open(TEMPLATE) as f:
    script = render(f.read(), directives, command, {"LONGJAX_VENV": args.venv} if args.venv else {})
  if args.dry_run:
    print(script + SUBMITTED_WITH)
  return execute([SUBMIT], args.dry_run, stdin=script)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
