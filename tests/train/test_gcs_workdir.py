"""A gs:// workdir: training writes config.json, metrics.jsonl and checkpoints there and resumes from them; the
evaluate main writes its results there; a notebook reads the run (`read_config`, `longjax.load`, also over a
mesh in bfloat16); convert exports it to a gs:// transformers directory and imports a model to a gs:// workdir
that loads with the run's logits; `launch/sweep.py --collect` tabulates a gs:// root. Against
gcp-storage-emulator on 127.0.0.1 (epath through gcsfs, Orbax's arrays through TensorStore's GCS driver pointed
at it); nothing leaves loopback."""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO
from processes import free_port

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

# A notebook's reads, then convert: the run exported to gs:// (and to a local directory, which is imported to a
# gs:// workdir); argv: that local directory.
READ_BACK = """
import json, sys
import numpy as np
from etils import epath
import longjax
from longjax import checkpoint, sharding
from longjax.config import MeshConfig
from longjax.convert import workdir
config = checkpoint.read_config("gs://bucket/run")
metrics = [json.loads(line) for line in epath.Path("gs://bucket/run/metrics.jsonl").read_text().splitlines()]
loaded = longjax.load("gs://bucket/run")
half = longjax.load("gs://bucket/run", mesh=sharding.make_mesh(MeshConfig(data=1, fsdp=2)), dtype="bfloat16")
exported = workdir.export_hf("gs://bucket/run", "gs://bucket/exports/hf")
workdir.export_hf("gs://bucket/run", sys.argv[1])
workdir.import_hf(sys.argv[1], "gs://bucket/imported")
imported = longjax.load("gs://bucket/imported")
logits = np.asarray(loaded.logits("import json"))
print(json.dumps({"steps": [m["step"] for m in metrics], "seq_len": config.train.seq_len,
                  "checkpoints": checkpoint.Checkpointer("gs://bucket/run", read_only=True).all_steps(),
                  "local": any(p.name.startswith("gs:") for p in epath.Path(".").iterdir()),
                  "exported_step": exported,
                  "hf": sorted(p.name for p in epath.Path("gs://bucket/exports/hf").iterdir()),
                  "imported_error": float(np.abs(np.asarray(imported.logits("import json")) - logits).max()),
                  "half_error": float(np.abs(np.asarray(half.logits("import json")) - logits).max()),
                  "half_dtypes": sorted({str(x.dtype) for x in __import__("jax").tree.leaves(half.params)})}))
"""


@pytest.fixture
def gcs_env(runner):
  port = free_port()
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
  evaluated = subprocess.run([sys.executable, "-m", "longjax.evaluate", "--workdir=gs://bucket/run",
                              "--task=perplexity", "--lengths=32", "--name=gcs"], env=gcs_env, capture_output=True,
                             text=True, timeout=600, cwd=tmp_path)
  assert evaluated.returncode == 0, evaluated.stderr[-4000:]
  proc = subprocess.run([sys.executable, "-c", READ_BACK, str(tmp_path / "hf")],
                        env={**gcs_env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, capture_output=True,
                        text=True, timeout=600, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-4000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert got["steps"][-1] == 3 and sorted(set(got["steps"])) == [1, 2, 3], got
  assert {key: got[key] for key in ("seq_len", "checkpoints", "local", "exported_step", "hf", "half_dtypes")} == {
      "seq_len": 64, "checkpoints": [2, 3], "local": False, "exported_step": 3,
      "hf": ["config.json", "model.safetensors"], "half_dtypes": ["bfloat16"]}, got
  assert got["imported_error"] < 1e-4 and 1e-5 < got["half_error"] < 0.1, got  # bfloat16 weights: near, not equal

  collected = subprocess.run([sys.executable, "launch/sweep.py", "--collect", "gs://bucket"], env=gcs_env,
                             capture_output=True, text=True, timeout=600, cwd=REPO)
  assert collected.returncode == 0, collected.stderr[-4000:]
  table = collected.stdout.splitlines()
  assert table[0].startswith("| run | status |") and "gcs ppl@32" in table[0], table
  assert [row.split(" | ")[:2] for row in table[2:4]] == [["| imported", "no output"], ["| run", "done"]], table
  assert "wrote gs://bucket/sweep.md, sweep.csv and sweep_loss.png" in collected.stdout
  assert not os.path.exists(tmp_path / "gs:") and not os.path.exists(os.path.join(REPO, "gs:"))  # all in the bucket
