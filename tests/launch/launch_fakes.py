"""Stand-ins for gcloud and uv on a fake TPU worker (this machine), shared by the launcher and sweep tests."""

import sys

# gcloud stand-in for one worker: `ssh` runs --command in bash (HOME is the worker's home), `scp` copies into
# HOME, describe/create/delete keep the slice's state in $FAKE_STATE; every call is logged to $GCLOUD_LOG.
# With $FAKE_PREEMPT present, the first `wait` (its ssh) preempts the slice: the run is killed, the state is
# PREEMPTED and ssh fails as it does when the VM goes away.
FAKE_GCLOUD = r"""#!PYTHON
import json, os, shutil, signal, subprocess, sys
args = sys.argv[1:]
with open(os.environ["GCLOUD_LOG"], "a") as f:
  f.write(json.dumps(["gcloud", *args]) + "\n")
state = os.environ["FAKE_STATE"]
option = lambda name: next(a.split("=", 1)[1] for a in args if a.startswith(f"--{name}="))
if os.environ.get("FAKE_SLICES"):  # several slices: a home directory and a state file each
  name = args[4] if "scp" not in args else [a for a in args if ":" in a][0].split(":")[0]
  os.environ["HOME"] = os.path.join(os.environ["FAKE_SLICES"], name)
  os.makedirs(os.environ["HOME"], exist_ok=True)
  state = os.environ["HOME"] + ".state"
if "describe" in args:
  if not os.path.exists(state):
    sys.exit("ERROR: NOT_FOUND")
  print(open(state).read())
elif "create" in args:
  created = os.environ.get("FAKE_CREATED_STATE") or ("ACTIVE" if "queued-resources" in args else "READY")
  open(state, "w").write(created)
elif "delete" in args:
  os.remove(state)
elif "scp" in args:
  source, destination = [a for a in args[4:] if not a.startswith("--")]
  shutil.copy(source, os.path.join(os.environ["HOME"], destination.split(":", 1)[1]))
elif "ssh" in args:
  command = option("command")
  preempt = os.environ.get("FAKE_PREEMPT", "")
  if "; while " in command and os.path.exists(preempt):
    os.remove(preempt)
    pid_files = [n for n in os.listdir(os.path.expanduser("~/longjax_logs")) if n.endswith(".pid")]
    for name in pid_files:
      os.killpg(int(open(os.path.expanduser(f"~/longjax_logs/{name}")).read()), signal.SIGKILL)
    open(state, "w").write("PREEMPTED")
    sys.exit(255)
  sys.exit(subprocess.run(["bash", "-c", command]).returncode)
"""

# uv stand-in: `uv venv DIR` makes DIR/bin/python (this Python) and an empty activate; every call is logged.
FAKE_UV = """#!/usr/bin/env bash
echo "$@" >> "$UV_LOG"
if [ "$1" = venv ]; then
  dir=${@: -1}
  mkdir -p "$dir/bin" && ln -s PYTHON "$dir/bin/python" && touch "$dir/bin/activate"
fi
"""


def write_fakes(bin_dir) -> None:
  """gcloud and uv stand-ins, executable, in `bin_dir` (put it first on PATH)."""
  for name, text in (("gcloud", FAKE_GCLOUD), ("uv", FAKE_UV)):
    (bin_dir / name).write_text(text.replace("PYTHON", sys.executable))
    (bin_dir / name).chmod(0o755)
