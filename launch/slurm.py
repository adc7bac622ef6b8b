"""Submit a longjax command to SLURM on N GPU nodes: launch/gpu_slurm.sbatch, rendered with the command inside.

  python launch/slurm.py --nodes 4 [--gpus_per_node 8] [--partition p] [--time 24:00:00] [--account a] \
      [--dry_run] -- python -m longjax.train --config configs/llama2_7b.py --workdir /shared/runs/llama2

The rendered script runs from this checkout (`--chdir`), starts one task per node with srun, and each task
joins the others through jax.distributed.initialize(), which reads SLURM's variables. --dry_run prints the
script and the sbatch command that reads it from stdin, instead of submitting.
"""

import os
import re
import shlex
import sys

from common import REPO, Parser, execute, fail, split_command

TEMPLATE = os.path.join(REPO, "launch", "gpu_slurm.sbatch")
SUBMIT = ["sbatch"]  # reads the job script from stdin
SUBMITTED_WITH = "# ---- submitted with:"


def render(template: str, directives: dict[str, str], command: list[str], environment: dict[str, str]) -> str:
  """The template with its `#SBATCH --key` lines set to `directives` (new keys after the last one) and the
  command (and exported variables) placed before the script's first use of its arguments."""
  lines = template.splitlines()
  pending = dict(directives)
  last = 0
  for i, line in enumerate(lines):
    match = re.match(r"#SBATCH --([\w-]+)", line)
    if match:
      last = i
      if match.group(1) in pending:
        lines[i] = f"#SBATCH --{match.group(1)}={pending.pop(match.group(1))}"
  lines[last + 1:last + 1] = [f"#SBATCH --{key}={value}" for key, value in pending.items()]
  start = lines.index("set -euo pipefail") + 1
  lines[start:start] = [f"export {key}={shlex.quote(value)}" for key, value in environment.items()] + [
      f"set -- {shlex.join(command)}"]
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
  own, command = split_command(argv)
  parser = Parser(prog="slurm.py", description=__doc__.splitlines()[0])
  parser.add_argument("--nodes", type=int, required=True)
  parser.add_argument("--gpus_per_node", type=int, default=8)
  parser.add_argument("--job_name", default="longjax")
  parser.add_argument("--partition", default="")
  parser.add_argument("--time", default="", help="wall-clock limit, e.g. 24:00:00")
  parser.add_argument("--account", default="")
  parser.add_argument("--venv", default="", help="the venv on the nodes (default: .venv of this checkout)")
  parser.add_argument("--dry_run", action="store_true", help="print the script and the sbatch command")
  args = parser.parse_args(own)
  if not command:
    fail("slurm.py: give the command after --, e.g. -- python -m longjax.train --config ... --workdir ...")
  for name in ("nodes", "gpus_per_node"):
    if getattr(args, name) < 1:
      fail(f"--{name}={getattr(args, name)} is invalid: must be >= 1")
  directives = {"nodes": str(args.nodes), "gpus-per-node": str(args.gpus_per_node), "job-name": args.job_name,
                "chdir": REPO, **{key: value for key, value in (("partition", args.partition), ("time", args.time),
                                                                ("account", args.account)) if value}}
  with open(TEMPLATE) as f:
    script = render(f.read(), directives, command, {"LONGJAX_VENV": args.venv} if args.venv else {})
  if args.dry_run:
    print(script + SUBMITTED_WITH)
  return execute([SUBMIT], args.dry_run, stdin=script)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
