"""Run a longjax main as N cooperating processes on this machine (jax.distributed, gloo CPU collectives).

  python launch/local.py --num_processes 2 [--dry_run] -- python -m longjax.train --config configs/tiny.py --workdir /tmp/mp

Each process gets JAX_COORDINATOR_ADDRESS (127.0.0.1 and a free port), JAX_NUM_PROCESSES and
JAX_PROCESS_ID; longjax's mains pass them to jax.distributed.initialize. This is the multi-host
code path of a TPU pod or GPU cluster, on loopback. Output lines are prefixed with the process id.
Exits with the first non-zero status of any process (all are stopped then). --dry_run prints each
process's command line, its variables first (`env K=V ... COMMAND`), instead of running them.
"""

import os
import shlex
import socket
import subprocess
import sys
import threading
import time

from common import Parser, fail, split_command


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _relay(process: subprocess.Popen, index: int) -> None:
  for line in process.stdout:
    sys.stdout.write(f"[{index}] {line}")
    sys.stdout.flush()


def process_env(address: str, num_processes: int, index: int, devices_per_process: int) -> dict[str, str]:
  """The variables that make process `index` one of `num_processes` on loopback, on fake CPU devices."""
  return {"JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": str(num_processes), "JAX_PROCESS_ID": str(index),
          "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"}


def launch(command: list[str], num_processes: int, devices_per_process: int = 1, dry_run: bool = False) -> int:
  address = f"127.0.0.1:{free_port()}"
  if dry_run:
    for index in range(num_processes):
      variables = [f"{k}={v}" for k, v in process_env(address, num_processes, index, devices_per_process).items()]
      print(shlex.join(["env", *variables, *command]))
    return 0
  processes, relays = [], []
  for index in range(num_processes):
    env = dict(os.environ, **process_env(address, num_processes, index, devices_per_process))
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    processes.append(process)
    relays.append(threading.Thread(target=_relay, args=(process, index), daemon=True))
    relays[-1].start()
  status = 0
  while any(p.poll() is None for p in processes):
    failed = [p.returncode for p in processes if p.poll() not in (None, 0)]
    if failed:  # one failed: the others would wait for it in their next collective until a timeout
      status = failed[0]
      for other in processes:
        if other.poll() is None:
          other.terminate()
      break
    time.sleep(0.2)
  for process in processes:
    code = process.wait()
    status = status or code
  for relay in relays:
    relay.join(timeout=5)
  return status


def main(argv: list[str]) -> int:
  own, command = split_command(argv)
  parser = Parser(prog="local.py", description=__doc__.splitlines()[0])
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1, help="fake CPU devices in each process")
  parser.add_argument("--dry_run", action="store_true", help="print each process's command instead of running it")
  args = parser.parse_args(own)
  if not command:
    fail("local.py: give the command after --, e.g. -- python -m longjax.train --config ... --workdir ...")
  for name in ("num_processes", "devices_per_process"):
    if getattr(args, name) < 1:
      fail(f"--{name}={getattr(args, name)} is invalid: must be >= 1")
  return launch(command, args.num_processes, args.devices_per_process, args.dry_run)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
