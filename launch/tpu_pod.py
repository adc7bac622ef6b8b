"""Train on a Cloud TPU VM slice: create it, copy this checkout to every worker, run, tail, stop, delete.

  python launch/tpu_pod.py create --name my-tpu --zone us-central2-b --accelerator_type v4-32 \
      --runtime_version tpu-ubuntu2204-base [--spot | --preemptible] [--queued]
  python launch/tpu_pod.py setup  --name my-tpu --zone us-central2-b
  python launch/tpu_pod.py run    --name my-tpu --zone us-central2-b -- \
      python -m longjax.train --config configs/llama2_7b.py --workdir gs://bucket/runs/llama2
  python launch/tpu_pod.py logs   --name my-tpu --zone us-central2-b [--follow] [--worker all]
  python launch/tpu_pod.py stop   --name my-tpu --zone us-central2-b
  python launch/tpu_pod.py delete --name my-tpu --zone us-central2-b [--queued]

Every subcommand takes --project and --dry_run (print the gcloud commands instead of running them).
`setup` copies the checkout (without .git and .venv) to ~/longjax on every worker and installs it into
~/longjax_venv, reinstalling only when setup.py changed, so it is safe to rerun after each code change.
`run` starts the command on every worker at once in the background (nohup), with one log per host in
~/longjax_logs/RUN.HOSTNAME.log and its pid beside it; `stop` sends it SIGTERM, on which training saves a
checkpoint and exits. `run --wait` stays in the foreground (sweeps run one job after another that way).
The training processes find each other themselves: longjax calls jax.distributed.initialize() on a TPU VM.
"""

import shlex
import sys

from common import REPO, Parser, dns_label, execute, fail, split_command

REMOTE_DIR = "~/longjax"
REMOTE_VENV = "~/longjax_venv"
REMOTE_LOGS = "~/longjax_logs"
REMOTE_TARBALL = "/tmp/longjax.tgz"


def _gcloud(args, *command: str, target: str | None = None) -> list[str]:
  """`gcloud compute tpus tpu-vm COMMAND [TARGET] --zone=... [--project=...]`."""
  line = ["gcloud", "compute", "tpus", *command]
  if target is not None:
    line.append(target)
  line.append(f"--zone={args.zone}")
  if args.project:
    line.append(f"--project={args.project}")
  return line


def _ssh(args, remote: str, worker: str = "all") -> list[str]:
  """Run the shell line `remote` on the workers (`all`, or one index) of the slice."""
  return _gcloud(args, "tpu-vm", "ssh", target=args.name) + [f"--worker={worker}", f"--command={remote}"]


def create(args) -> list[list[str]]:
  if args.spot and args.preemptible:
    fail("--spot and --preemptible exclude each other (spot is the newer of the two)")
  if args.queued:  # a queued resource waits for capacity; its node keeps the same name
    if args.preemptible:
      fail("--preemptible is invalid with --queued: queued resources take --spot")
    command = _gcloud(args, "queued-resources", "create", target=args.name) + [
        f"--node-id={args.name}", f"--accelerator-type={args.accelerator_type}",
        f"--runtime-version={args.runtime_version}"]
  else:
    command = _gcloud(args, "tpu-vm", "create", target=args.name) + [
        f"--accelerator-type={args.accelerator_type}", f"--version={args.runtime_version}"]
    if args.preemptible:
      command.append("--preemptible")
  if args.spot:
    command.append("--spot")
  return [command]


def setup(args) -> list[list[str]]:
  tarball = f"/tmp/longjax-{args.name}.tgz"
  pack = ["tar", "-czf", tarball, "-C", REPO, "--exclude=./.git", "--exclude=./.venv", "--exclude=__pycache__",
          "--exclude=*.egg-info", "--exclude=./demo_out", "--exclude=./workdirs", "."]
  # gcloud's scp: sources first, then INSTANCE:DESTINATION (the TPU name goes in the destination).
  copy = _gcloud(args, "tpu-vm", "scp") + [tarball, f"{args.name}:{REMOTE_TARBALL}", "--worker=all"]
  # The code is replaced wholesale (no stale files); the venv outside it is reinstalled only when setup.py changed.
  bootstrap = " && ".join([
      f"rm -rf {REMOTE_DIR}", f"mkdir -p {REMOTE_DIR} {REMOTE_LOGS}",
      f"tar -xzf {REMOTE_TARBALL} -C {REMOTE_DIR}",
      f"(test -x {REMOTE_VENV}/bin/python || python3 -m venv {REMOTE_VENV})",
      f"(cmp -s {REMOTE_DIR}/setup.py {REMOTE_VENV}/installed_setup.py || ({REMOTE_VENV}/bin/pip install -q -U pip"
      f" && {REMOTE_VENV}/bin/pip install -q -e '{REMOTE_DIR}[{args.extra}]'"
      f" && cp {REMOTE_DIR}/setup.py {REMOTE_VENV}/installed_setup.py))"])
  return [pack, copy, _ssh(args, bootstrap)]


def run(args) -> list[list[str]]:
  if not args.command:
    fail("run: give the training command after --, e.g. -- python -m longjax.train --config ... --workdir gs://...")
  log = f"{REMOTE_LOGS}/{args.run_name}.$(hostname).log"
  exports = "".join(f"export {shlex.quote(item)} && " for item in args.env)
  prefix = f"mkdir -p {REMOTE_LOGS} && cd {REMOTE_DIR} && . {REMOTE_VENV}/bin/activate && {exports}"
  command = shlex.join(args.command)
  if args.wait:
    remote = f"set -o pipefail && {prefix}{command} 2>&1 | tee {log}"
  else:
    # Braces: `&` must background the command alone, not the whole `&&` list (whose mkdir the pid file needs).
    remote = f"{prefix}{{ nohup {command} > {log} 2>&1 < /dev/null & echo $! > {REMOTE_LOGS}/{args.run_name}.pid; }}"
  return [_ssh(args, remote)]


def logs(args) -> list[list[str]]:
  tail = f"tail -n {args.lines}{' -F' if args.follow else ''} {REMOTE_LOGS}/{args.run_name}.*.log"
  return [_ssh(args, tail, worker=args.worker)]


def stop(args) -> list[list[str]]:
  pid = f"{REMOTE_LOGS}/{args.run_name}.pid"
  return [_ssh(args, f"if test -f {pid}; then kill -TERM $(cat {pid}) 2>/dev/null || true; rm -f {pid}; fi")]


def delete(args) -> list[list[str]]:
  if args.queued:  # --force deletes the queued resource's TPU VMs too
    return [_gcloud(args, "queued-resources", "delete", target=args.name) + ["--force", "--quiet"]]
  return [_gcloud(args, "tpu-vm", "delete", target=args.name) + ["--quiet"]]


def parse(argv: list[str]):
  own, command = split_command(argv)
  parser = Parser(prog="tpu_pod.py", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="action", required=True)
  actions = {}
  for action, help_text in (("create", "create the slice (or a queued resource for it)"),
                            ("setup", "copy the code to every worker and install it"),
                            ("run", "start COMMAND on every worker"), ("logs", "tail the logs"),
                            ("stop", "SIGTERM the run on every worker"), ("delete", "delete the slice")):
    p = actions[action] = sub.add_parser(action, help=help_text)
    p.add_argument("--name", required=True, help="the TPU VM (or queued resource) name")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default="")
    p.add_argument("--dry_run", action="store_true", help="print the commands instead of running them")
  actions["create"].add_argument("--accelerator_type", required=True, help="e.g. v4-32, v5litepod-16, v6e-64")
  actions["create"].add_argument("--runtime_version", required=True,
                                 help="e.g. tpu-ubuntu2204-base, v2-alpha-tpuv5-lite")
  actions["create"].add_argument("--spot", action="store_true")
  actions["create"].add_argument("--preemptible", action="store_true")
  for action in ("create", "delete"):
    actions[action].add_argument("--queued", action="store_true", help="a queued resource instead of a TPU VM")
  actions["setup"].add_argument("--extra", default="tpu", help="the setup.py extra to install")
  for action in ("run", "logs", "stop"):
    actions[action].add_argument("--run_name", default="longjax", help="names the log and pid files")
  actions["run"].add_argument("--env", action="append", default=[], help="KEY=VALUE exported first (repeatable)")
  actions["run"].add_argument("--wait", action="store_true", help="stay in the foreground until the run ends")
  actions["logs"].add_argument("--worker", default="0", help="a worker index, or all")
  actions["logs"].add_argument("--lines", type=int, default=100)
  actions["logs"].add_argument("--follow", action="store_true")
  args = parser.parse_args(own)
  args.command = command
  if command and args.action != "run":
    fail(f"{args.action} takes no command after --")
  dns_label(args.name, "--name")
  for item in getattr(args, "env", []):
    if "=" not in item or not item.split("=", 1)[0].isidentifier():
      fail(f"--env {item!r} is invalid: expected KEY=VALUE")
  return args


def main(argv: list[str]) -> int:
  args = parse(argv)
  commands = {"create": create, "setup": setup, "run": run, "logs": logs, "stop": stop, "delete": delete}[args.action]
  return execute(commands(args), args.dry_run)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
