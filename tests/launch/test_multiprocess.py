"""launch/local.py: 2 processes x 2 fake devices (jax.distributed, gloo on loopback) train as 1 process x 4 devices,
and their checkpoint restores in one process onto another mesh."""

import os
import subprocess
import sys

import numpy as np

from train.conftest import REPO, read_metrics

SEQ_LEN = 64  # the runner's shrunk tiny config

# Restores both runs' checkpoints in one process of 4 devices, onto an fsdp mesh that neither run trained on.
RESTORE = """
import json, sys
import jax, numpy as np
from longjax.config import from_config_dict
from longjax.train.loop import Trainer

config = from_config_dict(json.loads(sys.argv[1]))
result = {"devices": jax.device_count()}
for name, workdir in (("two", sys.argv[2]), ("one", sys.argv[3])):
  trainer = Trainer(config, workdir)
  try:
    step, params, _, _ = trainer.checkpointer.restore(trainer.abstract_params, trainer.abstract_opt)
  finally:
    trainer.checkpointer.close()
  leaves, shardings = jax.tree.leaves(params), jax.tree.leaves(trainer.param_shardings)
  on_mesh = all(x.sharding.is_equivalent_to(s, x.ndim) for x, s in zip(leaves, shardings))
  result[name] = {"step": step, "on_mesh": on_mesh,
                  "sharded": sum(x.sharding.shard_shape(x.shape) != x.shape for x in leaves)}
  np.savez(f"{workdir}/restored.npz", *[np.asarray(x) for x in leaves])
print(json.dumps(result))
"""


def _corpus(path, documents: int = 24):
  """Documents of exactly one row (SEQ_LEN tokens with bos and eos, byte tokens): the rows of 1 process are then the
  rows of 2 processes in another order (process 0 packs documents 0, 2, ...; process 1 documents 1, 3, ...), so
  equal losses also show that each process reads its own share."""
  path.mkdir()
  for i in range(documents):
    text = f"def f{i}(x):\n  return x * {i} + {i * 7 % 13}  # doc {i}"
    (path / f"doc{i:02d}.py").write_text(text.ljust(SEQ_LEN - 2, "#")[:SEQ_LEN - 2])
  return path


def test_two_processes_train_as_one_and_restore_onto_another_mesh(runner, tmp_path):
  corpus = _corpus(tmp_path / "corpus")
  extra = {"data.text_dir": str(corpus), "data.data_dir": str(tmp_path / "tfds"), "data.shuffle_buffer": 0,
           "train.num_steps": 2}
  # One process first: it builds the TFDS dataset that the two processes then share.
  one = subprocess.run(runner.train_command(tmp_path / "one", extra), capture_output=True, text=True, timeout=600,
                       cwd=REPO, env={**runner.env, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert one.returncode == 0, one.stderr[-3000:]
  two = subprocess.run([sys.executable, os.path.join(REPO, "launch", "local.py"), "--num_processes", "2",
                        "--devices_per_process", "2", "--", *runner.train_command(tmp_path / "two", extra)],
                       capture_output=True, text=True, timeout=600, cwd=REPO, env=runner.env)
  assert two.returncode == 0, two.stdout[-3000:]
  assert sorted(line[:3] for line in two.stdout.splitlines() if "done:" in line) == ["[0]", "[1]"], two.stdout[-3000:]

  one_metrics, two_metrics = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
  assert [m["step"] for m in two_metrics] == [1, 2]  # process 0 alone writes metrics
  np.testing.assert_allclose([m["loss"] for m in two_metrics], [m["loss"] for m in one_metrics], rtol=1e-4)
  assert one_metrics[1]["loss"] != one_metrics[0]["loss"]  # the second step trained on the first's update
  assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one"))  # config.json, tensorboard/...

  config = runner.config({**extra, "mesh.data": 1, "mesh.fsdp": 4})
  restored = runner.python(RESTORE, config.to_json(), str(tmp_path / "two"), str(tmp_path / "one"),
                           env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert restored["devices"] == 4
  for name in ("two", "one"):
    assert restored[name]["step"] == 2 and restored[name]["on_mesh"] and restored[name]["sharded"] > 0, restored
  with np.load(tmp_path / "two" / "restored.npz") as two_params, \
       np.load(tmp_path / "one" / "restored.npz") as one_params:
    assert len(two_params.files) == len(one_params.files) > 0
    for key in two_params.files:
      np.testing.assert_allclose(two_params[key], one_params[key], rtol=1e-4, atol=1e-6, err_msg=key)
