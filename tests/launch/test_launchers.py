"""Dry runs of the TPU pod, SLURM and Kubernetes launchers reach every worker and run the given command verbatim."""

import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from launch_fakes import write_fakes
from train.conftest import REPO

LAUNCH = os.path.join(REPO, "launch")
# A training command with characters a shell would split or expand.
TRAIN = ["python", "-m", "longjax.train", "--config", "configs/tiny.py:rope=yarn", "--workdir", "gs://b/run one",
         "--config.train.learning_rate=3e-4", "--config.data.text_glob=**/*.py"]


def _launch(script: str, *args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, os.path.join(LAUNCH, script), *args], capture_output=True, text=True,
                        timeout=60, cwd=cwd or os.path.dirname(REPO), env=env)


def _lines(proc: subprocess.CompletedProcess) -> list[list[str]]:
  assert proc.returncode == 0, proc.stderr
  return [shlex.split(line) for line in proc.stdout.splitlines()]


def _contains(sequence: list[str], part: list[str]) -> bool:
  return any(sequence[i:i + len(part)] == part for i in range(len(sequence) - len(part) + 1))


def _option(command: list[str], name: str) -> str:
  values = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{name}=")]
  assert len(values) == 1, (name, command)
  return values[0]


def _assert_usage_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
  lines = proc.stderr.splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  assert fragment in lines[0] and not proc.stdout, (fragment, lines[0])


# ---- TPU pod ----

TPU = ["--name", "my-tpu", "--zone", "us-central2-b", "--project", "proj", "--dry_run"]

@pytest.fixture
def worker(tmp_path):
  """A fake TPU worker: a home directory, and gcloud and uv stand-ins first on PATH."""
  home, bin_dir = tmp_path / "home", tmp_path / "bin"
  home.mkdir()
  bin_dir.mkdir()
  write_fakes(bin_dir)
  env = {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}",
         "GCLOUD_LOG": str(tmp_path / "gcloud.log"), "UV_LOG": str(tmp_path / "uv.log"),
         "FAKE_STATE": str(tmp_path / "state"), "FAKE_PREEMPT": str(tmp_path / "preempt")}
  # A name of its own: the code's tarball is /tmp/longjax-NAME.tgz.
  name = f"t{os.getpid()}-{tmp_path.name[-12:].lower().replace('_', '-')}".rstrip("-")
  return {"home": home, "env": env, "tmp": tmp_path, "args": ["--name", name, "--zone", "z"]}


def _calls(path) -> list[list[str]]:
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_tpu_create_as_vm_or_queued_resource():
  [vm] = _lines(_launch("tpu_pod.py", "create", *TPU, "--accelerator_type", "v4-32", "--runtime_version",
                        "tpu-ubuntu2204-base", "--preemptible"))
  assert vm[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "my-tpu"]
  assert _option(vm, "accelerator-type") == "v4-32" and _option(vm, "version") == "tpu-ubuntu2204-base"
  assert _option(vm, "zone") == "us-central2-b" and _option(vm, "project") == "proj" and "--preemptible" in vm
  # A queued resource is created, then described until ACTIVE.
  queued, describe = _lines(_launch("tpu_pod.py", "create", *TPU, "--accelerator_type", "v5litepod-16",
                                    "--runtime_version", "v2-alpha-tpuv5-lite", "--spot", "--queued"))
  assert queued[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "my-tpu"]
  assert _option(queued, "node-id") == "my-tpu" and _option(queued, "runtime-version") == "v2-alpha-tpuv5-lite"
  assert "--spot" in queued
  assert describe == ["gcloud", "compute", "tpus", "queued-resources", "describe", "my-tpu", "--zone=us-central2-b",
                      "--project=proj", "--format=value(state.state)"]
  [delete] = _lines(_launch("tpu_pod.py", "delete", *TPU, "--queued"))
  assert delete[3:6] == ["queued-resources", "delete", "my-tpu"] and "--force" in delete


def test_tpu_queued_create_polls_until_active_or_gives_up(worker):
  env, args = worker["env"], worker["args"]
  create = ["create", *args, "--accelerator_type", "v4-8", "--runtime_version", "r", "--queued", "--poll", "1"]
  assert _launch("tpu_pod.py", *create, env=env).returncode == 0
  calls = _calls(worker["tmp"] / "gcloud.log")
  assert [c[3:5] for c in calls] == [["queued-resources", "create"], ["queued-resources", "describe"]]
  for state, message in (("FAILED", "is FAILED"), ("WAITING_FOR_RESOURCES", "is WAITING_FOR_RESOURCES after 0 s")):
    proc = _launch("tpu_pod.py", *create, "--wait_timeout", "0", env={**env, "FAKE_CREATED_STATE": state})
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr


def test_tpu_setup_runs_in_bash_installs_python_3_12_and_is_idempotent(worker):
  env, home = worker["env"], worker["home"]
  pack, copy, install = _lines(_launch("tpu_pod.py", "setup", *TPU))
  assert pack[0] == "tar" and _contains(pack, ["-C", REPO]) and "--exclude=./.git" in pack
  assert copy[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in copy
  # scp takes SOURCE then TPU_NAME:DESTINATION (the name belongs in the destination, not before the files).
  assert [arg for arg in copy[5:] if not arg.startswith("--")] == [pack[pack.index("-czf") + 1], "my-tpu:longjax.tgz"]
  assert install[4:6] == ["ssh", "my-tpu"] and "--worker=all" in install
  # The real thing, in bash: the tarball unpacked in ~/longjax, a 3.12 venv from uv, the package installed with
  # its extra from the expanded home directory.
  for _ in range(2):
    proc = _launch("tpu_pod.py", "setup", *worker["args"], env=env)
    assert proc.returncode == 0, proc.stderr
  assert (home / "longjax" / "setup.py").read_text() == open(os.path.join(REPO, "setup.py")).read()
  assert (home / "longjax" / "configs" / "base.py").exists() and not (home / "longjax" / ".git").exists()
  uv_calls = (worker["tmp"] / "uv.log").read_text().splitlines()
  venv = f"{home}/longjax_venv"
  # Once: the second setup found the venv's Python and an unchanged setup.py.
  assert uv_calls == [f"venv -q --python 3.12 {venv}", f"pip install -q --python {venv}/bin/python -e {home}/longjax[tpu]"]


def test_tpu_network_flags_reach_ssh_and_scp():
  for action in ("setup", "run", "wait", "logs", "stop"):
    tail = ["--", "python"] if action == "run" else []
    for command in _lines(_launch("tpu_pod.py", action, *TPU, "--internal_ip", "--tunnel_through_iap", *tail)):
      if command[0] == "gcloud":
        assert "--internal-ip" in command and "--tunnel-through-iap" in command, command


def _wait_gone(pid: int) -> None:
  for _ in range(300):
    if not os.path.exists(f"/proc/{pid}"):
      return
    time.sleep(0.1)
  raise AssertionError(f"process {pid} still runs")


SAVES_ON_TERM = ("import os, signal, sys, time; "
                 "signal.signal(signal.SIGTERM, lambda *a: (print('saved', os.environ['XLA_FLAGS'], sys.argv[1:],"
                 " flush=True), sys.exit(0))); print('training', flush=True); time.sleep(60)")


def test_tpu_run_is_detached_refuses_while_live_and_stop_saves(worker):
  env, home, args = worker["env"], worker["home"], worker["args"]
  (home / "longjax").mkdir()
  (home / "longjax_venv" / "bin").mkdir(parents=True)
  (home / "longjax_venv" / "bin" / "activate").write_text("")
  train = [sys.executable, "-c", SAVES_ON_TERM, *TRAIN[3:]]
  run = ["run", *args, "--run_name", "r1", "--env", "XLA_FLAGS=--xla_dump_to=/tmp/x y"]
  [ssh] = _lines(_launch("tpu_pod.py", *run, "--dry_run", "--", *train))
  assert "--worker=all" in ssh and "setsid nohup bash -c" in _option(ssh, "command")
  started = _launch("tpu_pod.py", *run, "--", *train, env=env)
  assert started.returncode == 0 and "started r1" in started.stdout, started.stderr
  pid = int((home / "longjax_logs" / "r1.pid").read_text())
  assert os.getpgid(pid) == pid  # its own process group (setsid): stop signals the group
  # A second run while r1 is live is refused on every worker, and r1 keeps its pid file.
  again = _launch("tpu_pod.py", "run", *args, "--run_name", "r2", "--", "true", env=env)
  assert again.returncode == 3 and "error: run r1 is live" in again.stderr, again.stderr
  assert int((home / "longjax_logs" / "r1.pid").read_text()) == pid
  [log] = (home / "longjax_logs").glob("r1.*.log")
  for _ in range(100):
    if "training" in log.read_text():
      break
    time.sleep(0.1)
  assert _launch("tpu_pod.py", "stop", *args, "--run_name", "r1", env=env).returncode == 0
  waited = _launch("tpu_pod.py", "wait", *args, "--run_name", "r1", "--poll", "1", env=env)
  assert waited.returncode == 0, waited.stderr
  _wait_gone(pid)
  assert log.read_text().splitlines() == ["training", f"saved --xla_dump_to=/tmp/x y {TRAIN[3:]}"]
  assert (home / "longjax_logs" / "r1.status").read_text().strip() == "0"
  # Nothing live now: a failing run starts, and `run --wait` reports its status and log.
  failed = _launch("tpu_pod.py", "run", *args, "--run_name", "r3", "--wait", "--poll", "1", "--",
                   sys.executable, "-c", "import sys; sys.exit('error: bad config')", env=env)
  assert failed.returncode == 1 and "error: bad config" in failed.stderr, failed.stderr


def test_tpu_submit_recreates_a_preempted_slice_and_reruns(worker):
  env, home, args = worker["env"], worker["home"], worker["args"]
  (worker["tmp"] / "preempt").write_text("")
  starts = worker["tmp"] / "starts"
  train = [sys.executable, "-c", f"import time; open({str(starts)!r}, 'a').write('start\\n'); time.sleep(1)"]
  proc = _launch("tpu_pod.py", "submit", *args, "--accelerator_type", "v4-8", "--runtime_version", "base",
                 "--spot", "--poll", "1", "--", *train, env=env)
  assert proc.returncode == 0, proc.stderr
  assert starts.read_text() == "start\nstart\n"  # once before the preemption, once after
  actions = [c[3:5] for c in _calls(worker["tmp"] / "gcloud.log") if c[4] in ("create", "delete")]
  assert actions == [["tpu-vm", "create"], ["tpu-vm", "delete"], ["tpu-vm", "create"]]
  assert "the run was cut off" in proc.stderr
  # Its dry run: look, create, copy, install, start, wait.
  lines = _lines(_launch("tpu_pod.py", "submit", *TPU, "--accelerator_type", "v4-8", "--runtime_version", "base",
                         "--", *TRAIN))
  assert [line[3:5] if line[0] == "gcloud" else line[:1] for line in lines] == [
      ["tpu-vm", "describe"], ["tpu-vm", "create"], ["tpu-vm", "describe"], ["tar"], ["tpu-vm", "scp"],
      ["tpu-vm", "ssh"], ["tpu-vm", "ssh"], ["tpu-vm", "ssh"]]
  assert shlex.join(TRAIN) in shlex.split(_option(lines[-2], "command").split("bash -c ", 1)[1])[0]


def test_tpu_logs_and_stop_commands():
  [tail] = _lines(_launch("tpu_pod.py", "logs", *TPU, "--worker", "all", "--follow"))
  assert "--worker=all" in tail and _option(tail, "command") == "tail -n 100 -F ~/longjax_logs/longjax.*.log"
  [stop] = _lines(_launch("tpu_pod.py", "stop", *TPU))
  assert "--worker=all" in stop and "kill -TERM -- -$(cat ~/longjax_logs/longjax.pid)" in _option(stop, "command")


@pytest.mark.parametrize("args,fragment", [
    (["run", "--name", "My_TPU", "--zone", "z", "--", "python"], "--name='My_TPU' is invalid"),
    (["run", "--name", "t", "--zone", "z"], "give the training command after --"),
    (["create", "--name", "t", "--zone", "z", "--accelerator_type", "v4-8", "--runtime_version", "r", "--spot",
      "--preemptible"], "--spot and --preemptible exclude each other"),
    (["create", "--name", "t", "--zone", "z", "--accelerator_type", "v4-8", "--runtime_version", "r", "--queued",
      "--preemptible"], "--preemptible is invalid with --queued"),
    (["create", "--name", "t", "--zone", "z"], "give --accelerator_type and --runtime_version"),
    (["setup", "--name", "t", "--zone", "z", "--", "python"], "setup takes no command after --"),
    (["launch", "--name", "t"], "invalid choice: 'launch'"),
    (["run", "--name", "t", "--zone", "z", "--env", "1A=b", "--", "python"], "--env '1A=b' is invalid"),
])
def test_tpu_bad_input_is_one_line(args, fragment):
  _assert_usage_error(_launch("tpu_pod.py", *args, "--dry_run"), fragment)


# ---- SLURM ----

FAKE_SRUN = """#!/usr/bin/env bash
# srun stand-in: records its arguments, then runs the command once per node as SLURM would.
echo "$@" > "$SRUN_RECORD"
nodes=1
while [[ "$1" == --* ]]; do
  case "$1" in --nodes=*) nodes=${1#--nodes=} ;; esac
  shift
done
for ((i = 0; i < nodes; i++)); do SLURM_PROCID=$i "$@" || exit $?; done
"""


def test_slurm_renders_an_sbatch_script_whose_srun_runs_the_command_on_every_node(tmp_path):
  echo = [sys.executable, "-c", "import json, os, sys; print(json.dumps([os.environ['SLURM_PROCID'], "
          "os.environ['JAX_LOCAL_DEVICE_IDS'], sys.argv[1:]]))", *TRAIN[3:]]
  proc = _launch("slurm.py", "--nodes", "4", "--gpus_per_node", "2", "--partition", "gpu", "--time", "1:00:00",
                 "--venv", str(tmp_path / "venv"), "--dry_run", "--", *echo)
  assert proc.returncode == 0, proc.stderr
  script, submit = proc.stdout.split("# ---- submitted with:\n")
  assert shlex.split(submit) == ["sbatch", "--parsable"]  # the script goes to stdin; it prints the job id
  directives = dict(line[len("#SBATCH --"):].partition("=")[::2] for line in script.splitlines()
                    if line.startswith("#SBATCH --"))
  assert directives["nodes"] == "4" and directives["gpus-per-node"] == "2" and directives["ntasks-per-node"] == "1"
  assert "exclusive" in directives and "requeue" in directives and directives["open-mode"] == "append"
  assert directives["signal"] == "B:USR1@300" and directives["cpus-per-task"] == "16"
  assert directives["partition"] == "gpu" and directives["time"] == "1:00:00" and directives["chdir"] == REPO
  assert f"set -- {shlex.join(echo)}" in script.splitlines()

  bin_dir, venv = tmp_path / "bin", tmp_path / "venv" / "bin"
  bin_dir.mkdir()
  venv.mkdir(parents=True)
  (venv / "activate").write_text("")
  (bin_dir / "srun").write_text(FAKE_SRUN)
  (bin_dir / "srun").chmod(0o755)
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NUM_NODES": "4", "SLURM_JOB_ID": "7",
         "SLURM_GPUS_ON_NODE": "2", "SLURM_CPUS_PER_TASK": "16", "SRUN_RECORD": str(tmp_path / "srun_args")}
  ran = subprocess.run(["bash", "-s"], input=script, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
  assert ran.returncode == 0, ran.stderr
  assert (tmp_path / "srun_args").read_text().split()[:5] == [
      "--nodes=4", "--ntasks-per-node=1", "--cpus-per-task=16", "--kill-on-bad-exit=1", "--export=ALL"]
  [start, *outputs] = ran.stdout.splitlines()
  assert start.startswith("job 7 start 1 on 4 node(s): ")
  assert [json.loads(line) for line in outputs] == [[str(i), "0,1", TRAIN[3:]] for i in range(4)]


# scancel/scontrol stand-ins: record their arguments; `scancel --signal=TERM` signals the training process.
FAKE_SCANCEL = """#!/usr/bin/env bash
echo "scancel $*" >> "$SLURM_RECORD"
kill -TERM "$(cat "$TRAIN_PID")"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
echo "scontrol $*" >> "$SLURM_RECORD"
"""


def test_slurm_time_limit_signal_checkpoints_then_requeues(tmp_path):
  """SLURM's USR1 (--signal lead time) reaches the batch shell: training gets SIGTERM, saves, and the job requeues."""
  train = [sys.executable, "-c", "import os, signal, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); "
           "signal.signal(signal.SIGTERM, lambda *a: (print('saved'), sys.exit(0))); time.sleep(60)",
           str(tmp_path / "train.pid")]
  proc = _launch("slurm.py", "--nodes", "1", "--signal_lead", "600", "--venv", str(tmp_path / "venv"), "--dry_run",
                 "--", *train)
  script = proc.stdout.split("# ---- submitted with:\n")[0]
  assert "#SBATCH --signal=B:USR1@600" in script.splitlines()
  bin_dir, venv = tmp_path / "bin", tmp_path / "venv" / "bin"
  bin_dir.mkdir()
  venv.mkdir(parents=True)
  (venv / "activate").write_text("")
  for name, text in (("srun", FAKE_SRUN), ("scancel", FAKE_SCANCEL), ("scontrol", FAKE_SCONTROL)):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_ID": "42",
         "SLURM_GPUS_ON_NODE": "1", "SRUN_RECORD": str(tmp_path / "srun_args"),
         "SLURM_RECORD": str(tmp_path / "record"), "TRAIN_PID": str(tmp_path / "train.pid")}
  job = subprocess.Popen(["bash", "-c", script, "batch"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, cwd=tmp_path)
  for _ in range(300):
    if (tmp_path / "train.pid").exists():
      break
    time.sleep(0.1)
  job.send_signal(signal.SIGUSR1)  # what SLURM does --signal_lead seconds before the time limit
  out, err = job.communicate(timeout=60)
  assert job.returncode == 0, err
  assert "saved" in out and "requeueing job 42" in out
  assert (tmp_path / "record").read_text().splitlines() == ["scancel --signal=TERM 42", "scontrol requeue 42"]


@pytest.mark.parametrize("args,fragment", [
    (["--nodes", "0", "--", "python"], "--nodes=0 is invalid"),
    (["--nodes", "2"], "give the command after --"),
    (["--nodes", "two", "--", "python"], "argument --nodes: invalid int value"),
    (["--nodes", "1", "--signal_lead", "-1", "--", "python"], "--signal_lead=-1 is invalid"),
])
def test_slurm_bad_input_is_one_line(args, fragment):
  _assert_usage_error(_launch("slurm.py", *args, "--dry_run"), fragment)


# ---- Kubernetes ----

def _manifest(*args: str) -> dict:
  yaml = pytest.importorskip("yaml")
  proc = _launch("k8s.py", "--name", "rope-sweep", "--image", "us-docker.pkg.dev/p/r/longjax:1", *args, "--dry_run",
                 "--", *TRAIN)
  assert proc.returncode == 0, proc.stderr
  return yaml.safe_load(proc.stdout)


def _pod(manifest: dict) -> tuple[dict, dict]:
  [replicated] = manifest["spec"]["replicatedJobs"]
  job = replicated["template"]["spec"]
  return job, job["template"]["spec"]


def test_k8s_tpu_jobset_has_one_pod_per_host_running_the_command():
  manifest = _manifest("--hosts", "4", "--tpu_accelerator", "tpu-v5-lite-podslice", "--tpu_topology", "4x4",
                       "--chips_per_host", "4", "--env", "LIBTPU_INIT_ARGS=--xla_tpu_enable_async_all_gather=true")
  assert manifest["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and manifest["kind"] == "JobSet"
  job, pod = _pod(manifest)
  assert job["completions"] == job["parallelism"] == 4 and job["completionMode"] == "Indexed"
  assert manifest["spec"]["replicatedJobs"][0]["replicas"] == 1
  assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                                 "cloud.google.com/gke-tpu-topology": "4x4"}
  [container] = pod["containers"]
  assert container["command"] == TRAIN and container["resources"]["limits"] == {"google.com/tpu": 4}
  env = {item["name"]: item for item in container["env"]}
  # The coordinator is the first pod's DNS name: JobSet's <jobset>-<replicated job>-<job index>-<pod index>.<jobset>.
  name = f"rope-sweep-{manifest['spec']['replicatedJobs'][0]['name']}-0-0.rope-sweep"
  assert env["JAX_COORDINATOR_ADDRESS"]["value"] == f"{name}:{container['ports'][0]['containerPort']}"
  assert env["JAX_NUM_PROCESSES"]["value"] == "4"
  assert env["JAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
      "metadata.annotations['batch.kubernetes.io/job-completion-index']")
  assert env["LIBTPU_INIT_ARGS"]["value"] == "--xla_tpu_enable_async_all_gather=true"
  assert manifest["spec"]["network"]["enableDNSHostnames"] is True


def test_k8s_gpu_jobset():
  job, pod = _pod(_manifest("--hosts", "2", "--gpus_per_host", "8", "--gpu_accelerator", "nvidia-h100-80gb"))
  assert job["completions"] == job["parallelism"] == 2
  assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 8}
  assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
  assert pod["containers"][0]["command"] == TRAIN


# A strict schema of the JobSet fields the launcher writes (jobset.x-k8s.io/v1alpha2 over batch/v1 Job and core/v1
# Pod): required keys, types, allowed values; an unknown key is an error, as with `kubectl apply --validate=strict`.
# (`kubectl apply --dry-run=client` needs a server that knows the JobSet CRD; kubeconform is not on PyPI.)
DNS_LABEL = r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?"
STR, INT, BOOL = str, int, bool


def _obj(required: dict, optional: dict | None = None) -> dict:
  return {"required": required, "optional": optional or {}}


def _map_of(kind):
  return ("map", kind)


def _list_of(kind):
  return ("list", kind)


ENV_VAR = _obj({"name": STR}, {"value": STR, "valueFrom": _obj({"fieldRef": _obj({"fieldPath": STR})})})
CONTAINER = _obj({"name": ("re", DNS_LABEL), "image": STR},
                 {"command": _list_of(STR), "env": _list_of(ENV_VAR),
                  "ports": _list_of(_obj({"containerPort": ("range", 1, 65535)})),
                  "resources": _obj({}, {"limits": _map_of((INT, STR)), "requests": _map_of((INT, STR))}),
                  "volumeMounts": _list_of(_obj({"name": STR, "mountPath": ("re", r"/.*")}))})
VOLUME = _obj({"name": ("re", DNS_LABEL)}, {"emptyDir": _obj({}, {"medium": ("enum", "", "Memory")}),
                                           "persistentVolumeClaim": _obj({"claimName": STR})})
POD_SPEC = _obj({"containers": _list_of(CONTAINER), "restartPolicy": ("enum", "Never", "OnFailure")},
                {"terminationGracePeriodSeconds": ("range", 0, 2**31), "nodeSelector": _map_of(STR),
                 "volumes": _list_of(VOLUME)})
JOB_SPEC = _obj({"template": _obj({"spec": POD_SPEC})},
                {"completionMode": ("enum", "Indexed", "NonIndexed"), "completions": ("range", 1, 10**6),
                 "parallelism": ("range", 1, 10**6), "backoffLimit": ("range", 0, 10**6)})
JOBSET = _obj({"apiVersion": ("enum", "jobset.x-k8s.io/v1alpha2"), "kind": ("enum", "JobSet"),
               "metadata": _obj({"name": ("re", DNS_LABEL)}, {"namespace": ("re", DNS_LABEL),
                                                             "annotations": _map_of(STR)}),
               "spec": _obj({"replicatedJobs": _list_of(_obj({"name": ("re", DNS_LABEL),
                                                               "template": _obj({"spec": JOB_SPEC})},
                                                              {"replicas": ("range", 1, 10**6)}))},
                            {"failurePolicy": _obj({}, {"maxRestarts": ("range", 0, 10**6)}),
                             "network": _obj({}, {"enableDNSHostnames": BOOL, "publishNotReadyAddresses": BOOL})})})


def schema_errors(value, kind, path="") -> list[str]:
  """Where `value` breaks `kind` (a type, an _obj, ("list"|"map"|"re"|"enum"|"range", ...))."""
  if isinstance(kind, type) or (isinstance(kind, tuple) and all(isinstance(k, type) for k in kind)):
    ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple)
                                                                                  else (kind,)))
    return [] if ok else [f"{path}: {value!r} is not {kind}"]
  if isinstance(kind, dict):
    if not isinstance(value, dict):
      return [f"{path}: not an object"]
    errors = [f"{path}.{key}: missing" for key in kind["required"] if key not in value]
    for key, item in value.items():
      sub = kind["required"].get(key, kind["optional"].get(key))
      errors += [f"{path}.{key}: unknown field"] if sub is None else schema_errors(item, sub, f"{path}.{key}")
    return errors
  tag, *rest = kind
  if tag == "list":
    if not isinstance(value, list) or not value:
      return [f"{path}: not a non-empty list"]
    return [e for i, item in enumerate(value) for e in schema_errors(item, rest[0], f"{path}[{i}]")]
  if tag == "map":
    if not isinstance(value, dict):
      return [f"{path}: not a map"]
    return [e for key, item in value.items() for e in schema_errors(item, rest[0], f"{path}.{key}")]
  if tag == "re":
    return [] if isinstance(value, str) and re.fullmatch(rest[0], value) else [f"{path}: {value!r} !~ {rest[0]}"]
  if tag == "enum":
    return [] if value in rest else [f"{path}: {value!r} not in {rest}"]
  low, high = rest
  ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
  return [] if ok else [f"{path}: {value!r} not an int in [{low}, {high}]"]


def validate_jobset(manifest: dict) -> list[str]:
  """The schema's errors, and the rules across fields: env values set once, mounts of declared volumes."""
  errors = schema_errors(manifest, JOBSET)
  for replicated in manifest["spec"]["replicatedJobs"]:
    pod = replicated["template"]["spec"]["template"]["spec"]
    volumes = [v["name"] for v in pod.get("volumes", [])]
    errors += [f"volume {v['name']}: exactly one source" for v in pod.get("volumes", [])
               if len(set(v) & {"emptyDir", "persistentVolumeClaim"}) != 1]
    errors += [f"duplicate volume {name}" for name in set(volumes) if volumes.count(name) > 1]
    for container in pod["containers"]:
      errors += [f"env {e['name']}: one of value, valueFrom" for e in container.get("env", [])
                 if ("value" in e) == ("valueFrom" in e)]
      errors += [f"mount of undeclared volume {m['name']}" for m in container.get("volumeMounts", [])
                 if m["name"] not in volumes]
  return errors


def test_k8s_manifests_pass_the_schema_and_are_sized_for_a_checkpoint_save():
  tpu = _manifest("--hosts", "4", "--tpu_accelerator", "tpu-v5-lite-podslice", "--tpu_topology", "4x4",
                  "--namespace", "research", "--pvc", "runs:/runs", "--env", "A=1")
  gpu = _manifest("--hosts", "2", "--gpus_per_host", "8", "--grace_period", "900", "--max_restarts", "2")
  for manifest in (tpu, gpu):
    assert validate_jobset(manifest) == [], validate_jobset(manifest)
  # The validator catches what a cluster would refuse.
  broken = json.loads(json.dumps(gpu))
  job, pod = _pod(broken)
  pod["containers"][0]["env"][1]["value"] = 2
  pod["containers"][0]["volumeMounts"].append({"name": "nope", "mountPath": "/x"})
  pod["restartPolicy"] = "Always"
  del pod["containers"][0]["image"]
  job["backofLimit"] = 1
  assert len(validate_jobset(broken)) == 5, validate_jobset(broken)
  # Restarts and grace: JobSet recreates every pod (a lone pod could not rejoin jax.distributed), SIGTERM gives
  # training time to save.
  assert tpu["spec"]["failurePolicy"]["maxRestarts"] == 5 and gpu["spec"]["failurePolicy"]["maxRestarts"] == 2
  job, pod = _pod(tpu)
  assert job["backoffLimit"] == 0 and pod["terminationGracePeriodSeconds"] == 600
  assert _pod(gpu)[1]["terminationGracePeriodSeconds"] == 900
  mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
  volumes = {v["name"]: v for v in pod["volumes"]}
  assert volumes[mounts["/runs"]]["persistentVolumeClaim"] == {"claimName": "runs"}
  assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory"}


def test_k8s_dry_run_ends_with_the_submit_command():
  proc = _launch("k8s.py", "--name", "j", "--image", "i", "--hosts", "1", "--gpus_per_host", "1", "--dry_run", "--",
                 "python")
  assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "# submitted with: kubectl apply -f -"


def test_dockerfile_packages_the_code_and_configs_for_every_accelerator():
  with open(os.path.join(REPO, "Dockerfile")) as f:
    dockerfile = f.read()
  with open(os.path.join(REPO, ".dockerignore")) as f:
    ignored = [line.strip() for line in f if line.strip() and not line.startswith("#")]
  with open(os.path.join(REPO, "setup.py")) as f:
    setup = f.read()
  instructions = [line.split(None, 1) for line in dockerfile.splitlines() if line and not line.startswith("#")]
  assert ["WORKDIR", "/longjax"] in instructions and ["COPY", ". ."] in instructions
  # configs/ (and the code) reach the image: `--config configs/x.py` resolves from the WORKDIR.
  for path in ("configs", "configs/llama2_7b.py", "longjax", "launch", "setup.py"):
    assert not any(path == pattern or path.startswith(pattern.rstrip("/") + "/") for pattern in ignored), path
  assert ".git" in ignored and ".venv" in ignored
  # Its Python satisfies python_requires; its EXTRA build argument names setup.py's extras.
  python = re.search(r"ARG PYTHON=(\d+)\.(\d+)", dockerfile).groups()
  required = re.search(r'python_requires=">=(\d+)\.(\d+)"', setup).groups()
  assert tuple(map(int, python)) >= tuple(map(int, required)) >= (3, 11)
  for extra in re.findall(r"--build-arg EXTRA=(\w+)", dockerfile):
    assert f'"{extra}": [' in setup, extra
  assert 'ARG EXTRA=cpu' in dockerfile


def test_local_dry_run_prints_every_process_command():
  lines = _lines(_launch("local.py", "--num_processes", "3", "--devices_per_process", "2", "--dry_run", "--",
                         *TRAIN))
  assert len(lines) == 3
  ports = set()
  for index, line in enumerate(lines):
    variables = dict(item.split("=", 1) for item in line[1:6])
    assert line[0] == "env" and line[6:] == TRAIN
    assert variables["JAX_PROCESS_ID"] == str(index) and variables["JAX_NUM_PROCESSES"] == "3"
    assert variables["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
    ports.add(variables["JAX_COORDINATOR_ADDRESS"])
  assert len(ports) == 1 and ports.pop().startswith("127.0.0.1:")
  _assert_usage_error(_launch("local.py", "--num_processes", "0", "--", "python"), "--num_processes=0 is invalid")


def test_k8s_yaml_writer_round_trips_awkward_strings():
  yaml = pytest.importorskip("yaml")
  spec = importlib.util.spec_from_file_location("k8s_launcher", os.path.join(LAUNCH, "k8s.py"))
  sys.path.insert(0, LAUNCH)  # k8s.py imports its sibling common.py
  try:
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(LAUNCH)
  value = {"a": ["yes", "null", "4", "x: y", "#c", "'q'", '"d"', "-", "", "multi\nline", 3, 1.5, True],
           "b": {"c": [{"d": 1, "e": [{"f": "g"}]}], "empty": {}, "none": []}}
  assert yaml.safe_load(module.to_yaml(value)) == value


@pytest.mark.parametrize("args,fragment", [
    (["--name", "Job_1", "--hosts", "1", "--gpus_per_host", "1"], "--name='Job_1' is invalid"),
    (["--hosts", "3", "--tpu_accelerator", "tpu-v5-lite-podslice", "--tpu_topology", "4x4"],
     "--hosts=3 is invalid: topology 4x4 has 16 chips"),
    (["--hosts", "2", "--tpu_accelerator", "t", "--tpu_topology", "4x4", "--gpus_per_host", "8"], "either"),
    (["--hosts", "2"], "either --tpu_accelerator"),
    (["--hosts", "2", "--tpu_accelerator", "t", "--tpu_topology", "four"], "--tpu_topology='four' is invalid"),
    (["--hosts", "0", "--gpus_per_host", "8"], "--hosts=0 is invalid"),
    (["--hosts", "1", "--gpus_per_host", "8", "--pvc", "runs"], "--pvc 'runs' is invalid"),
    (["--hosts", "1", "--gpus_per_host", "8", "--grace_period", "-1"], "--grace_period=-1 is invalid"),
])
def test_k8s_bad_input_is_one_line(args, fragment):
  _assert_usage_error(_launch("k8s.py", "--name", "job", "--image", "i", *args, "--dry_run", "--", "python"), fragment)
