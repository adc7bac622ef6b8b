"""What the launchers share: one-line usage errors, the `-- COMMAND` tail, and run-or-print of commands."""

import argparse
import os
import shlex
import subprocess
import sys

USAGE_ERROR = 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fail(message: str) -> None:
  """A user error: one line on stderr, exit status 2 (as longjax's mains)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(USAGE_ERROR)


class Parser(argparse.ArgumentParser):
  """argparse whose errors are one line (argparse prints the usage first)."""

  def error(self, message: str) -> None:
    fail(f"{self.prog}: {message}")


def split_command(argv: list[str]) -> tuple[list[str], list[str]]:
  """(launcher arguments, training command): the command is everything after the first `--`."""
  if "--" not in argv:
    return argv, []
  index = argv.index("--")
  return argv[:index], argv[index + 1:]


def dns_label(value: str, name: str) -> str:
  """`value` if it is a lowercase RFC 1123 label (what TPU, JobSet and pod names must be), else a usage error."""
  ok = value and len(value) <= 63 and value[0].isalpha() and value[-1].isalnum() and all(
      c.islower() or c.isdigit() or c == "-" for c in value)
  if not ok:
    fail(f"{name}={value!r} is invalid: lowercase letters, digits and '-', starting with a letter, at most 63")
  return value


def execute(commands: list[list[str]], dry_run: bool, stdin: str | None = None) -> int:
  """Print each command (shell-quoted) when `dry_run`; otherwise run them in order, stopping at a failure."""
  for command in commands:
    if dry_run:
      print(shlex.join(command))
      continue
    print(f"+ {shlex.join(command)}", file=sys.stderr)
    try:
      status = subprocess.run(command, input=stdin, text=True).returncode
    except FileNotFoundError:
      fail(f"{command[0]}: command not found; install it, or pass --dry_run to see the commands")
    if status:
      return status
  return 0
