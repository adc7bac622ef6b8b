"""Run a longjax main as N cooperating processes on this machine (jax.distributed, gloo CPU collectives).

  python launch/local.py --num_processes 2 -- python -m longjax.train --config configs/tiny.py --workdir /tmp/mp

Each process gets JAX_COORDINATOR_ADDRESS (127.0.0.1 and a free port), JAX_NUM_PROCESSES and
JAX_PROCESS_ID; longjax's mains pass them to jax.distributed.initialize. This is the multi-host
code path of a TPU pod or GPU cluster, on loopback. Output lines are prefixed with the process id.
Exits with the first non-zero status of any process (all are stopped then).
"""

import argparse
import os
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _relay(process: subprocess.Popen, index: int) -> None:
  for line in process.stdout:
    sys.stdout.write(f"[{index}] {line}")
    sys.stdout.flush()


def launch(command: list[str], num_processes: int, devices_per_process: int = 1) -> int:
  address = f"127.0.0.1:{free_port()}"
  processes, relays = [], []
  for index in range(num_processes):
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(num_processes),
               JAX_PROCESS_ID=str(index), JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1, help="fake CPU devices in each process")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run in every process")
  args = parser.parse_args()
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command after --")
  sys.exit(launch(command, args.num_processes, args.devices_per_process))


if __name__ == "__main__":
  main()
