"""When and how the mains call jax.distributed.initialize: config keys first, then JAX_* variables, then the cluster."""

import pytest

from train.conftest import assert_user_error

from longjax import cli
from longjax.config import ConfigError, DistributedConfig, from_config_dict
from repo_configs import load_config

SLURM = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "gpu[01-04]", "SLURM_NTASKS": "4", "SLURM_PROCID": "2"}
EXPLICIT = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}


@pytest.fixture(autouse=True)
def no_tpu_devices(monkeypatch):
  """This machine's /dev must not decide the answers (on a TPU VM it would)."""
  monkeypatch.setattr(cli.glob, "glob", lambda pattern: [])


def _arguments(environ, **config):
  return cli.distributed_arguments(DistributedConfig(**config), environ)


def test_single_process_without_a_cluster_or_coordinator():
  assert _arguments({}) is None
  assert _arguments({"JAX_NUM_PROCESSES": "4"}) is None  # a count alone names no run to join
  assert _arguments({**SLURM, "SLURM_NTASKS": "1"}) is None  # salloc/sbatch with one task
  assert _arguments({k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"}) is None  # a batch step, no srun
  assert _arguments({**EXPLICIT, **SLURM}, initialize="never") is None


def test_clusters_leave_what_they_know_to_jax():
  for environ, cluster in ((SLURM, "slurm"), ({"TPU_WORKER_HOSTNAMES": "a,b,c,d", "TPU_WORKER_ID": "1"}, "tpu"),
                           ({"MEGASCALE_COORDINATOR_ADDRESS": "host0"}, "tpu")):
    assert cli.detect_cluster(environ) == cluster
    assert _arguments(environ) == {"coordinator_address": None, "num_processes": None, "process_id": None,
                                   "initialization_timeout": 300}


def test_a_cloud_tpu_vm_is_detected_by_its_devices(monkeypatch):
  monkeypatch.setattr(cli.glob, "glob", lambda pattern: ["/dev/vfio/0"] if pattern.startswith("/dev/vfio") else [])
  assert cli.detect_cluster({}) == "tpu"
  assert _arguments({})["coordinator_address"] is None


def test_environment_and_config_give_coordinator_count_and_id():
  assert _arguments(EXPLICIT) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3,
                                  "initialization_timeout": 300}
  # Config keys win over the environment; an indexed Kubernetes Job's JOB_COMPLETION_INDEX is the id.
  got = _arguments({**EXPLICIT, **SLURM, "JAX_PROCESS_ID": ""}, coordinator_address="head:5", num_processes=8,
                   initialization_timeout=60)
  assert got == {"coordinator_address": "head:5", "num_processes": 8, "process_id": None, "initialization_timeout": 60}
  k8s = {"JAX_COORDINATOR_ADDRESS": "js-workers-0-0.js:1234", "JAX_NUM_PROCESSES": "2", "JOB_COMPLETION_INDEX": "1"}
  assert _arguments(k8s)["process_id"] == 1
  assert _arguments(k8s, process_id=0)["process_id"] == 0
  assert _arguments(SLURM, coordinator_address="gpu01:9999")["coordinator_address"] == "gpu01:9999"


def test_incomplete_or_inconsistent_settings_are_one_line_errors():
  with pytest.raises(ConfigError, match=r"^distributed.num_processes is not set and no TPU or SLURM cluster"):
    _arguments({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_PROCESS_ID": "0"})
  with pytest.raises(ConfigError, match=r"^distributed.coordinator_address is not set"):
    _arguments({}, initialize="always")
  with pytest.raises(ConfigError, match=r"^distributed.process_id=4 is invalid: must be in \[0, num_processes=4\)"):
    _arguments({**EXPLICIT, "JAX_PROCESS_ID": "4"})
  with pytest.raises(ConfigError, match=r"^environment variable JAX_NUM_PROCESSES='four' is invalid"):
    _arguments({**EXPLICIT, "JAX_NUM_PROCESSES": "four"})


@pytest.mark.parametrize("key,value,message", [
    ("initialize", "sometimes", "distributed.initialize='sometimes' is invalid: allowed: auto, always, never"),
    ("coordinator_address", "host", "distributed.coordinator_address='host' is invalid: expected host:port"),
    ("num_processes", -2, "distributed.num_processes=-2 is invalid"),
    ("process_id", 2, "distributed.process_id=2 is invalid: must be in [0, num_processes=2)"),
    ("initialization_timeout", 0, "distributed.initialization_timeout=0 is invalid: must be > 0"),
])
def test_config_keys_are_validated(key, value, message):
  config = load_config("tiny.py")
  config.distributed.num_processes = 2 if key == "process_id" else config.distributed.num_processes
  setattr(config.distributed, key, value)
  with pytest.raises(ConfigError) as error:
    from_config_dict(config)
  assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_the_train_main_reports_an_incomplete_setting_in_one_line(runner, tmp_path):
  proc = runner.train(tmp_path / "run", {"distributed.coordinator_address": "127.0.0.1:1"}, check=False)
  assert_user_error(proc, "distributed.num_processes is not set")
