"""Dry runs of the TPU pod, SLURM and Kubernetes launchers reach every worker and run the given command verbatim."""

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time

import pytest

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


def test_tpu_create_as_vm_or_queued_resource():
  [vm] = _lines(_launch("tpu_pod.py", "create", *TPU, "--accelerator_type", "v4-32", "--runtime_version",
                        "tpu-ubuntu2204-base", "--preemptible"))
  assert vm[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "my-tpu"]
  assert _option(vm, "accelerator-type") == "v4-32" and _option(vm, "version") == "tpu-ubuntu2204-base"
  assert _option(vm, "zone") == "us-central2-b" and _option(vm, "project") == "proj" and "--preemptible" in vm
  [queued] = _lines(_launch("tpu_pod.py", "create", *TPU, "--accelerator_type", "v5litepod-16", "--runtime_version",
                            "v2-alpha-tpuv5-lite", "--spot", "--queued"))
  assert queued[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "my-tpu"]
  assert _option(queued, "node-id") == "my-tpu" and _option(queued, "runtime-version") == "v2-alpha-tpuv5-lite"
  assert "--spot" in queued
  [delete] = _lines(_launch("tpu_pod.py", "delete", *TPU, "--queued"))
  assert delete[3:6] == ["queued-resources", "delete", "my-tpu"] and "--force" in delete


def test_tpu_setup_copies_to_every_worker_then_installs_on_every_worker():
  pack, copy, install = _lines(_launch("tpu_pod.py", "setup", *TPU))
  assert pack[0] == "tar" and _contains(pack, ["-C", REPO]) and "--exclude=./.git" in pack
  assert copy[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in copy
  # scp takes SOURCE then TPU_NAME:DESTINATION (the name belongs in the destination, not before the files).
  positional = [arg for arg in copy[5:] if not arg.startswith("--")]
  assert positional == [pack[pack.index("-czf") + 1], "my-tpu:/tmp/longjax.tgz"]
  assert install[4:6] == ["ssh", "my-tpu"] and "--worker=all" in install
  bootstrap = _option(install, "command")
  assert "tar -xzf /tmp/longjax.tgz -C ~/longjax" in bootstrap and "pip install -q -e '~/longjax[tpu]'" in bootstrap
  assert "cmp -s ~/longjax/setup.py" in bootstrap  # reinstalls only when setup.py changed


def test_tpu_run_starts_the_command_verbatim_on_every_worker_in_the_background(tmp_path):
  [ssh] = _lines(_launch("tpu_pod.py", "run", *TPU, "--env", "XLA_FLAGS=--xla_dump_to=/tmp/x y", "--", *TRAIN))
  assert ssh[4:6] == ["ssh", "my-tpu"] and "--worker=all" in ssh
  remote = _option(ssh, "command")
  assert shlex.join(TRAIN) in remote and "nohup" in remote
  # Run the remote line here, as a worker's shell would, with a stand-in venv and training command.
  (tmp_path / "longjax").mkdir()
  (tmp_path / "longjax_venv" / "bin").mkdir(parents=True)
  (tmp_path / "longjax_venv" / "bin" / "activate").write_text("")
  echo = [sys.executable, "-c", "import json, os, sys; print(json.dumps([sys.argv[1:], os.environ['XLA_FLAGS']]))"]
  [ssh] = _lines(_launch("tpu_pod.py", "run", *TPU, "--env", "XLA_FLAGS=--xla_dump_to=/tmp/x y", "--",
                         *echo, *TRAIN[3:]))
  subprocess.run(["bash", "-c", _option(ssh, "command")], env={**os.environ, "HOME": str(tmp_path)}, check=True,
                 timeout=30)
  pid = int((tmp_path / "longjax_logs" / "longjax.pid").read_text())
  for _ in range(300):  # the command runs in the background: wait for it to end
    if not os.path.exists(f"/proc/{pid}"):
      break
    time.sleep(0.1)
  [log] = list((tmp_path / "longjax_logs").glob("longjax.*.log"))
  assert json.loads(log.read_text()) == [TRAIN[3:], "--xla_dump_to=/tmp/x y"]


def test_tpu_run_wait_logs_and_stop():
  [ssh] = _lines(_launch("tpu_pod.py", "run", *TPU, "--wait", "--run_name", "r1", "--", *TRAIN))
  remote = _option(ssh, "command")
  assert "--worker=all" in ssh and shlex.join(TRAIN) in remote and "nohup" not in remote
  assert "| tee ~/longjax_logs/r1.$(hostname).log" in remote
  [tail] = _lines(_launch("tpu_pod.py", "logs", *TPU, "--worker", "all", "--follow"))
  assert "--worker=all" in tail and _option(tail, "command") == "tail -n 100 -F ~/longjax_logs/longjax.*.log"
  [stop] = _lines(_launch("tpu_pod.py", "stop", *TPU))
  assert "--worker=all" in stop and "kill -TERM $(cat ~/longjax_logs/longjax.pid)" in _option(stop, "command")


@pytest.mark.parametrize("args,fragment", [
    (["run", "--name", "My_TPU", "--zone", "z", "--", "python"], "--name='My_TPU' is invalid"),
    (["run", "--name", "t", "--zone", "z"], "give the training command after --"),
    (["create", "--name", "t", "--zone", "z", "--accelerator_type", "v4-8", "--runtime_version", "r", "--spot",
      "--preemptible"], "--spot and --preemptible exclude each other"),
    (["create", "--name", "t", "--zone", "z", "--accelerator_type", "v4-8", "--runtime_version", "r", "--queued",
      "--preemptible"], "--preemptible is invalid with --queued"),
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
  assert shlex.split(submit) == ["sbatch"]  # the script goes to sbatch's stdin
  directives = dict(line[len("#SBATCH --"):].partition("=")[::2] for line in script.splitlines()
                    if line.startswith("#SBATCH --"))
  assert directives["nodes"] == "4" and directives["gpus-per-node"] == "2" and directives["ntasks-per-node"] == "1"
  assert "exclusive" in directives
  assert directives["partition"] == "gpu" and directives["time"] == "1:00:00" and directives["chdir"] == REPO
  assert f"set -- {shlex.join(echo)}" in script.splitlines()

  bin_dir, venv = tmp_path / "bin", tmp_path / "venv" / "bin"
  bin_dir.mkdir()
  venv.mkdir(parents=True)
  (venv / "activate").write_text("")
  (bin_dir / "srun").write_text(FAKE_SRUN)
  (bin_dir / "srun").chmod(0o755)
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NUM_NODES": "4",
         "SLURM_GPUS_ON_NODE": "2", "SRUN_RECORD": str(tmp_path / "srun_args")}
  ran = subprocess.run(["bash", "-s"], input=script, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
  assert ran.returncode == 0, ran.stderr
  assert (tmp_path / "srun_args").read_text().split()[:3] == ["--nodes=4", "--ntasks-per-node=1", "--export=ALL"]
  assert [json.loads(line) for line in ran.stdout.splitlines()] == [[str(i), "0,1", TRAIN[3:]] for i in range(4)]


@pytest.mark.parametrize("args,fragment", [
    (["--nodes", "0", "--", "python"], "--nodes=0 is invalid"),
    (["--nodes", "2"], "give the command after --"),
    (["--nodes", "two", "--", "python"], "argument --nodes: invalid int value"),
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
])
def test_k8s_bad_input_is_one_line(args, fragment):
  _assert_usage_error(_launch("k8s.py", "--name", "job", "--image", "i", *args, "--dry_run", "--", "python"), fragment)
