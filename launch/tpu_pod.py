"""Train on a Cloud TPU VM slice: create it, copy this checkout to every worker, run detached, wait, stop, delete.

  T="--name my-tpu --zone us-central2-b --project my-project"
  python launch/tpu_pod.py create $T --accelerator_type v4-32 --runtime_version tpu-ubuntu2204-base [--spot] [--queued]
  python launch/tpu_pod.py setup  $T
  python launch/tpu_pod.py run    $T [--run_name r] [--wait] -- python -m longjax.train --config ... --workdir gs://...
  python launch/tpu_pod.py wait   $T [--run_name r]
  python launch/tpu_pod.py logs   $T [--follow] [--worker all]
  python launch/tpu_pod.py stop   $T [--run_name r]
  python launch/tpu_pod.py delete $T [--queued]
  python launch/tpu_pod.py submit $T --accelerator_type v4-32 --runtime_version tpu-ubuntu2204-base --spot \
      -- python -m longjax.train ...          # all of the above, resubmitted after a preemption

Every subcommand takes --project, --internal_ip / --tunnel_through_iap (passed to gcloud's ssh and scp) and
--dry_run (print the exact commands instead of running them).
`create --queued` polls the queued resource until it is ACTIVE (--wait_timeout). `setup` copies the checkout
(without .git and .venv) to ~/longjax on every worker and installs it with uv into ~/longjax_venv, a Python
--python (3.12) venv that uv downloads (the TPU images ship Python 3.10); it reinstalls only when setup.py
changed, so it is safe to rerun after each code change. `run` starts the command on every worker detached
(setsid + nohup: a dropped ssh connection does not stop it), one log per worker in
~/longjax_logs/RUN.HOSTNAME.log, its pid and exit status beside it; it refuses while any run is live. `wait`
returns when the run has ended, with its exit status (`run --wait` is run, then wait). `stop` sends the run's
process group SIGTERM, on which training saves a checkpoint and exits. `submit` creates the slice if it is
missing, sets it up, runs and waits; when the slice was preempted (a spot VM or a suspended queued resource)
it deletes it, creates it again and reruns the command, which resumes from its workdir, up to --max_resubmits
times. The training processes find each other themselves: longjax calls jax.distributed.initialize() on a TPU VM.
"""

import shlex
import subprocess
import sys
import time

from common import REPO, Parser, dns_label, execute, fail, split_command

REMOTE_DIR = "~/longjax"
REMOTE_VENV = "~/longjax_venv"
REMOTE_LOGS = "~/longjax_logs"
REMOTE_TARBALL = "longjax.tgz"  # in the worker's home: scp's relative destinations are
LOST = 75  # the exit status of `wait` when a run ended without writing its status (killed, or the VM went away)
LIVE = 3  # the exit status of `run` when a run is live on a worker
SSH_FAILED = 255  # ssh's exit status when the connection fails
READY_STATES = ("READY", "ACTIVE")  # tpu-vm describe's `state`, queued-resources describe's `state.state`
FAILED_QUEUED_STATES = ("FAILED", "SUSPENDED", "SUSPENDING")


def _gcloud(args, *command: str, target: str | None = None) -> list[str]:
  """`gcloud compute tpus GROUP COMMAND [TARGET] --zone=... [--project=...]`."""
  line = ["gcloud", "compute", "tpus", *command]
  if target is not None:
    line.append(target)
  line.append(f"--zone={args.zone}")
  if args.project:
    line.append(f"--project={args.project}")
  return line


def _network(args) -> list[str]:
  return ["--internal-ip"] * args.internal_ip + ["--tunnel-through-iap"] * args.tunnel_through_iap


def _ssh(args, remote: str, worker: str = "all") -> list[str]:
  """Run the shell line `remote` on the workers (`all`, or one index) of the slice."""
  return _gcloud(args, "tpu-vm", "ssh", target=args.name) + [f"--worker={worker}", *_network(args),
                                                               f"--command={remote}"]


def describe(args) -> list[str]:
  """The command that prints the slice's state: READY / PREEMPTED ... (a VM), ACTIVE / SUSPENDED ... (queued)."""
  if args.queued:
    return _gcloud(args, "queued-resources", "describe", target=args.name) + ["--format=value(state.state)"]
  return _gcloud(args, "tpu-vm", "describe", target=args.name) + ["--format=value(state)"]


def create(args) -> list[list[str]]:
  if args.spot and args.preemptible:
    fail("--spot and --preemptible exclude each other (spot is the newer of the two)")
  if not args.accelerator_type or not args.runtime_version:
    fail(f"{args.action}: give --accelerator_type and --runtime_version to create the slice {args.name}")
  if args.queued:  # a queued resource waits for capacity; its node keeps the same name
    if args.preemptible:
      fail("--preemptible is invalid with --queued: queued resources take --spot")
    command = _gcloud(args, "queued-resources", "create", target=args.name) + [
        f"--node-id={args.name}", f"--accelerator-type={args.accelerator_type}",
        f"--runtime-version={args.runtime_version}"]
  else:  # gcloud waits for the VM to be READY
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
  copy = _gcloud(args, "tpu-vm", "scp") + [tarball, f"{args.name}:{REMOTE_TARBALL}", "--worker=all", *_network(args)]
  venv_python = f"{REMOTE_VENV}/bin/python"
  # `~` expands only unquoted at the start of a word: the extra's brackets alone are quoted (against globbing).
  package = f"{REMOTE_DIR}'[{args.extra}]'"
  bootstrap = " && ".join([
      'export PATH="$HOME/.local/bin:$PATH"',
      # The code is replaced wholesale (no stale files); the venv outside it survives.
      f"rm -rf {REMOTE_DIR}", f"mkdir -p {REMOTE_DIR} {REMOTE_LOGS}", f"tar -xzf ~/{REMOTE_TARBALL} -C {REMOTE_DIR}",
      # uv installs a Python that the pinned packages accept (TPU images have 3.10); pip's user site has it.
      "(command -v uv >/dev/null || python3 -m pip install --user -q uv"
      " || curl -LsSf https://astral.sh/uv/install.sh | sh)",
      f"({venv_python} -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null"
      f" || (rm -rf {REMOTE_VENV} && uv venv -q --python {args.python} {REMOTE_VENV}))",
      # Reinstalled only when setup.py changed (the code itself is an editable install).
      f"(cmp -s {REMOTE_DIR}/setup.py {REMOTE_VENV}/installed_setup.py || (uv pip install -q --python {venv_python}"
      f" -e {package} && cp {REMOTE_DIR}/setup.py {REMOTE_VENV}/installed_setup.py))"])
  return [pack, copy, _ssh(args, bootstrap)]


# Whether pid $1 runs (a zombie, whose parent has not reaped it yet, does not: `kill -0` would say it does).
ALIVE = "alive() { ps -o stat= -p \"$1\" 2>/dev/null | grep -q '^[^Z]'; }; "


def _files(run_name: str) -> dict[str, str]:
  base = f"{REMOTE_LOGS}/{run_name}"
  return {"pid": f"{base}.pid", "status": f"{base}.status", "log": f"{base}.$(hostname).log"}


def start_line(args) -> str:
  """The shell line each worker runs: refuse while a run is live, else start the command detached."""
  files = _files(args.run_name)
  exports = "".join(f"export {shlex.quote(item)} && " for item in args.env)
  # setsid: a session of its own, so that the ssh session's end (SIGHUP) never reaches it and `stop` can signal
  # its process group. The wrapper catches SIGTERM (`:`) so that it outlives the training process and writes its
  # exit status; the command itself gets SIGTERM with its default handling (training: save, then exit).
  wrapper = (f"echo $$ > {files['pid']}; trap : TERM; cd {REMOTE_DIR} && . {REMOTE_VENV}/bin/activate && {exports}"
             f"{shlex.join(args.command)}; echo $? > {files['status']}")
  own = "echo \"run $name is live on $(hostname): attached\"; exit 0" if args.attach else ""
  refuse = (f"echo \"error: run $name is live on $(hostname) (pid $(cat $p)); stop it (tpu_pod.py stop --run_name"
            f" $name) or wait for it\" >&2; exit {LIVE}")
  check = (f"for p in {REMOTE_LOGS}/*.pid; do name=$(basename \"$p\" .pid); "
           f"if test -f \"$p\" && alive \"$(cat \"$p\")\"; then "
           + (f"if test \"$name\" = {shlex.quote(args.run_name)}; then {own}; fi; " if own else "")
           + f"{refuse}; fi; done")
  wait_pid = f"for i in $(seq 100); do test -s {files['pid']} && break; sleep 0.1; done"
  return (f"{ALIVE}mkdir -p {REMOTE_LOGS} && {check}; rm -f {files['pid']} {files['status']}; "
          f"setsid nohup bash -c {shlex.quote(wrapper)} > {files['log']} 2>&1 < /dev/null & {wait_pid}; "
          f"echo \"started {args.run_name} on $(hostname): {files['log']}\"")


def wait_line(args) -> str:
  """The shell line each worker runs: wait for the run to end, then exit with its status (the log's tail if not 0)."""
  files = _files(args.run_name)
  alive = f"test -f {files['pid']} && alive \"$(cat {files['pid']})\""
  return (f"{ALIVE}while {alive}; do sleep {args.poll}; done; "
          f"if test -f {files['status']}; then status=$(cat {files['status']}); else status={LOST}; "
          f"echo \"run {args.run_name} on $(hostname) ended without an exit status (stopped, killed, or the VM "
          f"restarted)\" >&2; fi; "
          f"if test \"$status\" != 0; then echo \"---- {args.run_name} on $(hostname) exited $status:\" >&2; "
          f"tail -n 20 {files['log']} >&2; fi; exit $status")


def run(args) -> list[list[str]]:
  if not args.command:
    fail("run: give the training command after --, e.g. -- python -m longjax.train --config ... --workdir gs://...")
  return [_ssh(args, start_line(args))] + ([_ssh(args, wait_line(args))] if args.wait else [])


def wait(args) -> list[list[str]]:
  return [_ssh(args, wait_line(args))]


def logs(args) -> list[list[str]]:
  tail = f"tail -n {args.lines}{' -F' if args.follow else ''} {REMOTE_LOGS}/{args.run_name}.*.log"
  return [_ssh(args, tail, worker=args.worker)]


def stop(args) -> list[list[str]]:
  pid = _files(args.run_name)["pid"]
  # The wrapper leads its own process group (setsid): the group is the wrapper and the training process.
  return [_ssh(args, f"if test -f {pid}; then kill -TERM -- -$(cat {pid}) 2>/dev/null || true; fi")]


def delete(args) -> list[list[str]]:
  if args.queued:  # --force deletes the queued resource's TPU VMs too
    return [_gcloud(args, "queued-resources", "delete", target=args.name) + ["--force", "--quiet"]]
  return [_gcloud(args, "tpu-vm", "delete", target=args.name) + ["--quiet"]]


def _state(args) -> str:
  """The slice's state, or "" when it does not exist (describe fails)."""
  proc = subprocess.run(describe(args), capture_output=True, text=True)
  return proc.stdout.strip() if proc.returncode == 0 else ""


def wait_until_ready(args) -> int:
  """Poll `describe` until the slice is READY/ACTIVE; 1 (and a message) on a failed state or after the timeout."""
  deadline = time.monotonic() + args.wait_timeout
  while True:
    state = _state(args)
    if state in READY_STATES:
      return 0
    if args.queued and state in FAILED_QUEUED_STATES:
      print(f"tpu_pod.py: queued resource {args.name} is {state}", file=sys.stderr)
      return 1
    if time.monotonic() > deadline:
      print(f"tpu_pod.py: {args.name} is {state or 'missing'} after {args.wait_timeout} s; still waiting there "
            "(delete it, or create again to wait longer)", file=sys.stderr)
      return 1
    print(f"tpu_pod.py: {args.name} is {state or 'missing'}; next look in {args.poll} s", file=sys.stderr, flush=True)
    time.sleep(args.poll)


def create_and_wait(args) -> int:
  status = execute(create(args), args.dry_run)
  if args.dry_run:
    print(shlex.join(describe(args)))  # polled until READY / ACTIVE
    return 0
  return status or wait_until_ready(args)


def submit(args) -> int:
  """Create (if missing), set up, run and wait; after a preemption delete, create and rerun (the run resumes)."""
  if not args.command:
    fail("submit: give the training command after --")
  if args.dry_run:  # a first submission: look at the slice, create it (given its type), set up, run, wait
    print(shlex.join(describe(args)))
    if args.accelerator_type:
      create_and_wait(args)
    return execute(setup(args) + run(args), dry_run=True)
  args.attach = True  # a rerun of `submit` after a lost connection waits for the run it started before
  for attempt in range(args.max_resubmits + 1):
    state, status = _state(args), 0
    if state and state not in READY_STATES:  # preempted, suspended or failed: the slice is gone
      print(f"tpu_pod.py: {args.name} is {state}: deleting and creating it again", file=sys.stderr, flush=True)
      execute(delete(args), False)
      state = ""
    if not state:
      status = create_and_wait(args)
      if status and not _state(args):
        return status  # it could not be created (quota, a wrong type): no preemption to wait out
    status = status or execute(setup(args) + run(args), False)
    # ssh's own failure (255) on a slice that is up: the connection dropped; the next attempt attaches.
    if status == 0 or (_state(args) in READY_STATES and status != SSH_FAILED):
      return status  # finished, or failed on a slice that is still up: the run's own failure
    print(f"tpu_pod.py: {args.name}: the run was cut off (preemption or a lost connection; attempt {attempt + 1} "
          f"of {args.max_resubmits + 1})", file=sys.stderr, flush=True)
  return status


ACTIONS = {"create": "create the slice (or a queued resource for it, polled until ACTIVE)",
           "setup": "copy the code to every worker and install it", "run": "start COMMAND on every worker, detached",
           "wait": "wait for a run to end, exit with its status", "logs": "tail the logs",
           "stop": "SIGTERM the run on every worker", "delete": "delete the slice",
           "submit": "create if missing, setup, run, wait; resubmit after a preemption"}


def parse(argv: list[str]):
  own, command = split_command(argv)
  parser = Parser(prog="tpu_pod.py", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="action", required=True)
  actions = {}
  for action, help_text in ACTIONS.items():
    p = actions[action] = sub.add_parser(action, help=help_text)
    p.add_argument("--name", required=True, help="the TPU VM (or queued resource) name")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default="")
    p.add_argument("--internal_ip", action="store_true", help="ssh/scp to the workers' internal IPs")
    p.add_argument("--tunnel_through_iap", action="store_true", help="ssh/scp through Identity-Aware Proxy")
    p.add_argument("--dry_run", action="store_true", help="print the commands instead of running them")
  for action in ("create", "submit"):
    actions[action].add_argument("--accelerator_type", default="", help="e.g. v4-32, v5litepod-16, v6e-64")
    actions[action].add_argument("--runtime_version", default="", help="e.g. tpu-ubuntu2204-base, v2-alpha-tpuv5-lite")
    actions[action].add_argument("--spot", action="store_true")
    actions[action].add_argument("--preemptible", action="store_true")
    actions[action].add_argument("--wait_timeout", type=int, default=3600, help="seconds to wait for ACTIVE/READY")
  for action in ("create", "delete", "submit"):
    actions[action].add_argument("--queued", action="store_true", help="a queued resource instead of a TPU VM")
  for action in ("setup", "submit"):
    actions[action].add_argument("--extra", default="tpu", help="the setup.py extra to install")
    actions[action].add_argument("--python", default="3.12", help="the venv's Python version (uv installs it)")
  for action in ("run", "wait", "logs", "stop", "submit"):
    actions[action].add_argument("--run_name", default="longjax", help="names the log, pid and status files")
  for action in ("run", "submit"):
    actions[action].add_argument("--env", action="append", default=[], help="KEY=VALUE exported first (repeatable)")
  actions["run"].add_argument("--wait", action="store_true", help="then wait for the run to end (as `wait`)")
  actions["run"].add_argument("--attach", action="store_true", help="if this run is live, do not refuse: attach")
  for action in ("create", "run", "wait", "submit"):
    actions[action].add_argument("--poll", type=int, default=30, help="seconds between looks at the slice or run")
  actions["submit"].add_argument("--max_resubmits", type=int, default=5, help="recreations after preemptions")
  actions["logs"].add_argument("--worker", default="0", help="a worker index, or all")
  actions["logs"].add_argument("--lines", type=int, default=100)
  actions["logs"].add_argument("--follow", action="store_true")
  args = parser.parse_args(own)
  args.command = command
  if command and args.action not in ("run", "submit"):
    fail(f"{args.action} takes no command after --")
  dns_label(args.name, "--name")
  for item in getattr(args, "env", []):
    if "=" not in item or not item.split("=", 1)[0].isidentifier():
      fail(f"--env {item!r} is invalid: expected KEY=VALUE")
  if args.action == "submit":
    args.wait = True
    args.attach = False
  if not hasattr(args, "queued"):
    args.queued = False
  return args


def main(argv: list[str]) -> int:
  args = parse(argv)
  if args.action == "create":
    return create_and_wait(args) if args.queued else execute(create(args), args.dry_run)
  if args.action == "submit":
    return submit(args)
  commands = {"setup": setup, "run": run, "wait": wait, "logs": logs, "stop": stop, "delete": delete}[args.action]
  return execute(commands(args), args.dry_run)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
