"""A gs:// workdir: training writes config.json, metrics.jsonl and checkpoints there, resumes from them, and
`longjax.checkpoint.read_config` / `longjax.load` read it. Against gcp-storage-emulator on 127.0.0.1 (epath
through gcsfs, Orbax's arrays through TensorStore's GCS driver pointed at it); nothing leaves loopback."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO

pytest.importorskip("gcp_storage_emulator")
pytest.importorskip("gcsfs")

EMULATOR = """
import sys, time
from gcp_storage_emulator import server
from gcp_storage_emulator.handlers import objects

# Real GCS sends the object's generation with every download; the emulator does not, and TensorStore, which
# keys OCDBT's conditional manifest writes on it, then fails the write ("Malformed StorageGeneration").
_download = objects.download
def download(request, response, storage, *args, **kwargs):
  _download(request, response, storage, *args, **kwargs)
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except Exception:
    return
  response["x-goog-generation"] = str(obj["generation"])
  response["x-goog-metageneration"] = str(obj["metageneration"])
objects.download = download
for _, handlers in server.HANDLERS:
  for method, handler in handlers.items():
    if handler is _download:
      handlers[method] = download
create_server = server.create_server
create_server("127.0.0.1", int(sys.argv[1]), in_memory=True, default_bucket="bucket").start()
print("ready", flush=True)
while True:
  time.sleep(60)
"""

READ_BACK = """
import json
from etils import epath
import longjax
from longjax import checkpoint
config = checkpoint.read_config("gs://bucket/run")
metrics = [json.loads(line) for line in epath.Path("gs://bucket/run/metrics.jsonl").read_text().splitlines()]
loaded = longjax.load("gs://bucket/run")
print(json.dumps({"steps": [m["step"] for m in metrics], "seq_len": config.train.seq_len,
                  "checkpoints": checkpoint.Checkpointer("gs://bucket/run", read_only=True).all_steps(),
                  "local": any(p.name.startswith("gs:") for p in epath.Path(".").iterdir())}))
"""


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def gcs_env(runner):
  port = _free_port()
  server = subprocess.Popen([sys.executable, "-c", EMULATOR, str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
  try:
    assert server.stdout.readline().strip() == "ready"
    endpoint = f"http://127.0.0.1:{port}"
    # No credentials and no metadata server: google-auth and TensorStore must not look beyond loopback.
    # gcsfs's default file system asks the storage-control API for the bucket type on every call (3 s each).
    yield {**runner.env, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "STORAGE_EMULATOR_HOST": endpoint,
           "TENSORSTORE_GCS_HTTP_URL": endpoint,
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "NO_GCE_CHECK": "True",
           "GCE_METADATA_HOST": "127.0.0.1:1", "GCE_METADATA_IP": "127.0.0.1:1"}
  finally:
    server.kill()
    server.wait()


def test_train_and_resume_in_a_gs_workdir(runner, gcs_env, tmp_path):
  def train(steps):
    extra = {"train.num_steps": steps, "train.checkpoint_every": 2}
    proc = subprocess.run(runner.train_command("gs://bucket/run", extra), env=gcs_env, capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc

  train(2)
  resumed = train(3)
  assert "resumed from gs://bucket/run/checkpoints at step 2" in resumed.stderr, resumed.stderr[-3000:]
  proc = subprocess.run([sys.executable, "-c", READ_BACK], env=gcs_env, capture_output=True, text=True,
                        timeout=600, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-4000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert got["steps"][-1] == 3 and sorted(set(got["steps"])) == [1, 2, 3], got
  assert {**got, "steps": None} == {"steps": None, "seq_len": 64, "checkpoints": [2, 3], "local": False}, got
  assert not os.path.exists(tmp_path / "gs:")  # nothing under ./gs:/bucket/run
