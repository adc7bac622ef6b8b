"""What every `python -m longjax.*` main shares: flag parsing, user-error reporting, and process set-up before
JAX starts (joining a multi-process run, keeping host buffers).

A user error (a bad flag, a config file or value, a path, a checkpoint) prints one line
to stderr and exits with status 2, without a traceback.
"""

import glob
import logging
import os
import re
import sys
from typing import Callable, Mapping

from absl import app, flags
from absl import logging as absl_logging

from ml_collections import config_flags

from longjax.config import ConfigError, DistributedConfig, load_file

USAGE_ERROR = 2


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(USAGE_ERROR)


class _ConfigFileParser(flags.ArgumentParser):
  """`--config path/to/config.py[:arg]` through longjax.config.load_file, locked (a misspelled override fails)."""

  def parse(self, spec: str):
    config = load_file(spec)
    config.lock()
    return config

  def flag_type(self) -> str:
    return "config file"


def define_config_flag(name: str, help_string: str) -> flags.FlagHolder:
  """A `--NAME FILE[:arg]` flag loaded by `load_file`, with `--NAME.key=value` overrides (ml_collections)."""
  holder = config_flags.DEFINE_config_file(name, None, help_string)
  # DEFINE_config_file's own loader runs a file without its sibling imports and defers its errors; the
  # flag it defines (which brings the overrides) parses its value with whatever `.parser` it holds.
  flags.FLAGS[name].parser = _ConfigFileParser()
  return holder


def override_keys(name: str = "config") -> tuple[str, ...]:
  """The dotted keys given as `--NAME.key=value` flags (after parsing), e.g. ("model.rope.factor",)."""
  prefix = f"{name}."
  return tuple(flag[len(prefix):] for flag in flags.FLAGS if flag.startswith(prefix) and flags.FLAGS[flag].present)


def unknown_key_line(error: BaseException, argv: list[str]) -> str:
  """One line for an override naming a key the locked config lacks: ml_collections raises a KeyError (perhaps
  inside an AttributeError) whose message quotes the key and may add `Did you mean "window" instead of "windw"?`."""
  inner = error.args[0] if error.args else error
  if isinstance(inner, BaseException):
    inner = inner.args[0] if inner.args else inner
  text = str(inner)
  found = re.search(r"""["'](\w+)["']""", text)
  name = found.group(1) if found else text.splitlines()[0] if text else "?"
  given = next((a.split("=", 1)[0] for a in argv if a.startswith("--config.") and
                a.split("=", 1)[0].split(".")[-1] == name), f"--config...{name}")
  suggestion = re.search(r'Did you mean "(\w+)"', text)
  hint = f"; did you mean {suggestion.group(1)!r}?" if suggestion else ""
  return f"{given}: unknown config key {name!r}{hint}; every key is listed, with a comment, in configs/base.py"


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    cause = e.__context__  # absl wraps what a flag's parser raised (a config file's ConfigError) in its own error
    _fail(str(cause) if isinstance(cause, ConfigError) else str(e).splitlines()[0])
  except ConfigError as e:
    _fail(str(e))
  except (AttributeError, KeyError) as e:  # an override naming a key the locked config does not have
    _fail(unknown_key_line(e, argv))
  except Exception as e:  # anything else parsing raised: report it in one line
    _fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_host_buffers(environ: Mapping[str, str] | None = None) -> bool:
  """On a CPU-only glibc host, make malloc keep and reuse XLA's per-call buffers; True if applied.

  XLA CPU allocates one temporary arena per executable call (115 MB for the demo model's train step) from
  an Eigen worker thread. glibc serves a block that size with a fresh mmap and unmaps it on free, so every
  step page-faults and zero-fills the whole arena again: measured on the demo step, 28,000 minor faults
  and 47 ms of kernel time a step (of 96 ms wall on 2 cores). With one malloc arena (the main one, which
  grows by brk and has no size cap), no mmap, and no trimming, the arena is carved from the heap once and
  reused: 2,800 faults and 11 ms a step, 96 -> 84 ms (benchmarks/README.md). Memory freed by a step is
  kept for the next instead of going back to the OS, so resident memory stays at its peak.

  Must run before JAX starts its CPU backend (its worker threads pick their malloc arena at their first
  allocation); `cli.run` calls it for the mains that run steps (train, evaluate, generate, demo), not for
  convert and plan, whose large host arrays are short-lived one-offs that glibc's default returns to the OS.
  Skipped where an accelerator is present or named (JAX_PLATFORMS), off glibc, or with
  LONGJAX_KEEP_HOST_BUFFERS=0.
  """
  import ctypes

  environ = os.environ if environ is None else environ
  if environ.get("LONGJAX_KEEP_HOST_BUFFERS", "1") == "0" or not sys.platform.startswith("linux"):
    return False
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms and set(platforms.split(",")) != {"cpu"}:
    return False
  if not platforms and any(glob.glob(pattern) for pattern in
                           ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")):
    return False  # an NVIDIA or AMD GPU, or a TPU
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # glibc only (musl has no mallopt arenas)
  except (OSError, AttributeError):
    return False
  applied = [libc.mallopt(option, value) == 1 for option, value in
             ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))]
  return all(applied)


def run(main: Callable[[list[str]], None], *, keep_buffers: bool = True) -> None:
  """absl's app.run, with user errors reported as one line and exit status 2; `keep_buffers`: call
  `keep_host_buffers` first (the mains that run train, evaluation or decode steps)."""
  if keep_buffers:
    keep_host_buffers()

  def guarded(argv):
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax and TFDS log every file at INFO
    logging.getLogger("longjax").setLevel(logging.INFO)
    try:
      main(argv)
    except ConfigError as e:
      _fail(str(e))

  app.run(guarded, flags_parser=_parse_flags)


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
  value = environ.get(name)
  if value is None or value == "":
    return None
  if not value.lstrip("-").isdigit():
    raise ConfigError(f"environment variable {name}={value!r} is invalid: expected an integer")
  return int(value)


def detect_cluster(environ: Mapping[str, str]) -> str | None:
  """The multi-host cluster that jax.distributed.initialize() finds by itself here: "slurm", "tpu" or None.

  SLURM: a job step of several tasks (srun; a batch script's own step has no SLURM_STEP_NODELIST).
  TPU: GKE's worker list or Multislice's coordinator, or a Cloud TPU VM's accelerator devices (JAX then
  asks the VM's metadata server for its peers; a single-host VM is a cluster of one).
  """
  if "SLURM_JOB_ID" in environ and "SLURM_STEP_NODELIST" in environ and (_env_int(environ, "SLURM_NTASKS") or 1) > 1:
    return "slurm"
  if any(name in environ for name in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
                                      "MEGASCALE_COORDINATOR_ADDRESS")):
    return "tpu"
  if glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"):  # TPU v2-v4 / v5e and later
    return "tpu"
  return None


def distributed_arguments(config: DistributedConfig, environ: Mapping[str, str]) -> dict | None:
  """jax.distributed.initialize's keyword arguments for this process, or None for a single-process run.

  Each of coordinator, count and id comes from the config, else from JAX_COORDINATOR_ADDRESS /
  JAX_NUM_PROCESSES / JAX_PROCESS_ID (JOB_COMPLETION_INDEX for the id in an indexed Kubernetes Job),
  else it stays None for JAX to read from the detected cluster (TPU metadata, SLURM variables).
  """
  if config.initialize == "never":
    return None
  address = config.coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS") or None
  count = config.num_processes or _env_int(environ, "JAX_NUM_PROCESSES")
  index = config.process_id if config.process_id >= 0 else _env_int(environ, "JAX_PROCESS_ID")
  if index is None:
    index = _env_int(environ, "JOB_COMPLETION_INDEX")
  cluster = detect_cluster(environ)
  if config.initialize == "auto" and address is None and cluster is None:
    return None
  if cluster is None and (address is None or count is None or index is None):
    missing = [name for name, value in (("coordinator_address", address), ("num_processes", count),
                                        ("process_id", index)) if value is None]
    raise ConfigError(f"distributed.{missing[0]} is not set and no TPU or SLURM cluster is detected: give "
                      f"{', '.join(f'distributed.{name}' for name in missing)} (or JAX_COORDINATOR_ADDRESS, "
                      "JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
  if count is not None and index is not None and not 0 <= index < count:
    raise ConfigError(f"distributed.process_id={index} is invalid: must be in [0, num_processes={count})")
  return {"coordinator_address": address, "num_processes": count, "process_id": index,
          "initialization_timeout": config.initialization_timeout}


def initialize_distributed(config: DistributedConfig, environ: Mapping[str, str] | None = None) -> None:
  """Join a multi-process run (jax.distributed.initialize) when the config or environment names one.

  Process 0 alone logs at INFO, as it alone writes metrics, config.json and TensorBoard files; the other
  processes log warnings and errors.
  """
  import jax

  arguments = distributed_arguments(config, os.environ if environ is None else environ)
  if arguments is None:
    return
  # CPU collectives over loopback/TCP; accelerators use their own (ICI, NCCL) and ignore this.
  # (Asking for the backend here would initialise it too early.)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**arguments)
  if jax.process_index() != 0:
    logging.getLogger("longjax").setLevel(logging.WARNING)
