"""What every `python -m longjax.*` main shares: flag parsing and user-error reporting.

A user error (a bad flag, a config file or value, a path, a checkpoint) prints one line
to stderr and exits with status 2, without a traceback.
"""

import logging
import os
import sys
from typing import Callable

from absl import app, flags
from absl import logging as absl_logging

from ml_collections import config_flags

from longjax.config import ConfigError, load_file

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


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    cause = e.__context__  # absl wraps what a flag's parser raised (a config file's ConfigError) in its own error
    _fail(str(cause) if isinstance(cause, ConfigError) else str(e).splitlines()[0])
  except ConfigError as e:
    _fail(str(e))
  except (AttributeError, KeyError) as e:  # an override naming a key the locked config does not have
    name = str(e.args[0] if e.args else e).strip("'\"")
    given = next((a.split("=", 1)[0] for a in argv if a.startswith("--config.") and
                  a.split("=", 1)[0].split(".")[-1] == name), f"--config...{name}")
    _fail(f"{given}: unknown config key {name!r}; every key is listed, with a comment, in configs/base.py")
  except Exception as e:  # anything else parsing raised: report it in one line
    _fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def run(main: Callable[[list[str]], None]) -> None:
  """absl's app.run, with user errors reported as one line and exit status 2."""

  def guarded(argv):
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax and TFDS log every file at INFO
    logging.getLogger("longjax").setLevel(logging.INFO)
    try:
      main(argv)
    except ConfigError as e:
      _fail(str(e))

  app.run(guarded, flags_parser=_parse_flags)


def initialize_distributed() -> None:
  """Join a multi-process run when the launcher says so (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).

  On TPU pods and SLURM/Kubernetes GPU clusters jax.distributed.initialize() finds these itself;
  the variables make local CPU runs (launch/local.py, gloo collectives on loopback) work too.
  """
  import jax

  if "JAX_COORDINATOR_ADDRESS" not in os.environ:
    return
  # CPU collectives over loopback/TCP; accelerators use their own (ICI, NCCL) and ignore this.
  # (Asking for the backend here would initialise it too early.)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"], int(os.environ["JAX_NUM_PROCESSES"]),
                             int(os.environ["JAX_PROCESS_ID"]))
