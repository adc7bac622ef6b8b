"""Real multi-process runs (jax.distributed, gloo CPU collectives on 127.0.0.1): 2 processes x 2 devices build the
global batches and losses of 1 process x 4 devices on data=4, sequence=4 and fsdp=2 x sequence=2; a checkpoint of
2 processes resumes on 1 and one of 1 on 2, as an uninterrupted run goes on; SIGTERM sent to one of two processes
makes both save the same step, and the run resumes exactly; process 0 alone prepares a TFDS data_dir.

Three launches (2, 1, then 2 processes) carry all the checks, since each pays imports and compilation.
"""

import json
import os
import sys

import numpy as np

from conftest import read_metrics
from processes import run_workers

MESHES = {"data4": {"mesh.data": 4}, "seq4": {"mesh.data": 1, "mesh.sequence": 4},
          "fsdp2seq2": {"mesh.data": 1, "mesh.fsdp": 2, "mesh.sequence": 2}}
STEPS, LONGER, STRAIGHT = 3, 6, 9

# Every process runs this; argv: coordinator address, process count, process id, a JSON job.
WORKER = r"""
import hashlib, json, os, signal, sys, threading, time
import jax
address, count, index, job = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
if count > 1:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(address, count, index, initialization_timeout=120)
import numpy as np
from jax.experimental import multihost_utils
from longjax.config import from_config_dict
from longjax.train import loop
from longjax.train.loop import Trainer, train_and_evaluate

def config(overrides):
  return from_config_dict(json.loads(overrides))

result = {"process": jax.process_index(), "processes": jax.process_count(), "batches": {}}
if "prepare" in job:  # a fresh data_dir: who generates the dataset
  import dataclasses
  from longjax.data import open_documents, textdir
  generated, original = [], textdir.TextDir._split_generators
  textdir.TextDir._split_generators = lambda self, manager: generated.append(1) or original(self, manager)
  data_dir, overrides = job["prepare"]
  result["documents"] = len(open_documents(dataclasses.replace(config(overrides).data, data_dir=data_dir), "train"))
  result["generated"] = len(generated)
for name, workdir, overrides in job.get("meshes", []):
  trainer = Trainer(config(overrides), workdir)
  try:
    reader = trainer.train_batches()
    digests = []
    for _ in range(2):
      batch = trainer.global_batch(next(reader), reader.rows)
      whole = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in sorted(batch.items())}
      digests.append(hashlib.sha256(b"".join(v.tobytes() for v in whole.values())).hexdigest())
    result["batches"][name] = {"digests": digests, "shape": list(whole["inputs"].shape), "rows": reader.rows}
  finally:
    trainer.checkpointer.close()
  train_and_evaluate(config(overrides), workdir)
for workdir, overrides in job.get("train", []):
  train_and_evaluate(config(overrides), workdir)
if job.get("time_flag"):
  loop._any_process(False)
  start = time.perf_counter()
  for _ in range(50):
    loop._any_process(False)
  result["flag_ms"] = (time.perf_counter() - start) / 50 * 1e3
if "preempt" in job:
  workdir, overrides = job["preempt"]
  if jax.process_index() == 1:  # process 1 alone is signalled, once process 0 has logged 2 steps
    def signal_later():
      path = os.path.join(workdir, "metrics.jsonl")
      while not (os.path.exists(path) and len(open(path).read().splitlines()) >= 2):
        time.sleep(0.05)
      os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=signal_later, daemon=True).start()
  result["preempted_at"] = train_and_evaluate(config(overrides), workdir)["step"]
  resumed = json.loads(overrides)
  resumed["train"]["num_steps"] = result["preempted_at"] + 2
  result["resumed_to"] = train_and_evaluate(config(json.dumps(resumed)), workdir)["step"]
print("RESULT " + json.dumps(result), flush=True)
"""


def _run(runner, processes: int, job: dict) -> list[dict]:
  """WORKER in `processes` processes of 4 // processes fake CPU devices; their results, by process."""
  return run_workers(runner.env, processes, lambda index, address: [sys.executable, "-c", WORKER, address,
                                                                    str(processes), str(index), json.dumps(job)])


def _losses(workdir) -> dict[int, float]:
  return {m["step"]: m["step_loss"] for m in read_metrics(workdir)}


def test_the_global_batch_and_losses_do_not_depend_on_the_process_count(runner, tmp_path):
  def overrides(extra):
    return runner.config({"data.shuffle_buffer": 8, "train.checkpoint_every": 100, **extra}).to_json()

  def meshes(tag):
    return [(name, str(tmp_path / f"{tag}_{name}"), overrides({**mesh, "train.num_steps": STEPS}))
            for name, mesh in MESHES.items()]

  data4 = lambda steps, **extra: overrides({**MESHES["data4"], "train.num_steps": steps, **extra})  # noqa: E731
  two = _run(runner, 2, {"meshes": meshes("two"), "time_flag": True,
                         "prepare": (str(tmp_path / "fresh_tfds"), overrides({}))})
  one = _run(runner, 1, {"meshes": meshes("one"), "train": [(str(tmp_path / "two_data4"), data4(LONGER)),
                                                             (str(tmp_path / "straight"), data4(STRAIGHT))]})
  preempt = (str(tmp_path / "preempted"), data4(100_000))
  two_again = _run(runner, 2, {"train": [(str(tmp_path / "one_data4"), data4(LONGER))], "preempt": preempt})

  # Process 0 alone prepared the fresh data_dir; process 1 waited, then read it.
  assert [(r["generated"], r["documents"] > 0) for r in two] == [(1, True), (0, True)], two
  assert two[0]["documents"] == two[1]["documents"]

  # The same global batches, whatever process builds which rows; each of 2 processes packs only its rows.
  for name in MESHES:
    (single,), pair = [r["batches"][name] for r in one], [r["batches"][name] for r in two]
    assert pair[0]["digests"] == pair[1]["digests"] == single["digests"], name
    assert single["shape"] == pair[0]["shape"] == [4, 64]
  assert [r["batches"]["data4"]["rows"] for r in two] == [[0, 1], [2, 3]]
  assert [r["batches"]["seq4"]["rows"] for r in two] == [[0, 1, 2, 3]] * 2  # length spans the hosts

  # The same losses.
  for name in MESHES:
    a, b = _losses(tmp_path / f"one_{name}"), _losses(tmp_path / f"two_{name}")
    first = list(range(1, STEPS + 1))  # data4's workdirs went on, resumed by the other process count
    assert set(first) <= set(a) and set(first) <= set(b), name
    np.testing.assert_allclose([b[s] for s in first], [a[s] for s in first], rtol=1e-6, err_msg=name)

  # Elastic resume: 2 -> 1 and 1 -> 2 processes go on as the uninterrupted run.
  straight = _losses(tmp_path / "straight")
  for workdir in ("two_data4", "one_data4"):
    resumed = _losses(tmp_path / workdir)
    assert sorted(resumed) == list(range(1, LONGER + 1)), workdir
    np.testing.assert_allclose([resumed[s] for s in resumed], [straight[s] for s in resumed], rtol=1e-6,
                               err_msg=workdir)

  # SIGTERM to process 1 only: both stop and save at the same step, and the resumed steps are the straight run's.
  reached = {r["preempted_at"] for r in two_again}
  assert len(reached) == 1 and 2 <= min(reached) < 100_000, two_again
  (reached,) = reached
  steps = sorted(int(n) for n in os.listdir(tmp_path / "preempted" / "checkpoints") if n.isdigit())
  assert steps == [reached, reached + 2] and {r["resumed_to"] for r in two_again} == {reached + 2}
  preempted = _losses(tmp_path / "preempted")
  assert sorted(preempted) == list(range(1, reached + 3))
  common = [s for s in preempted if s in straight]
  assert common and max(common) > reached or reached + 1 > STRAIGHT
  np.testing.assert_allclose([preempted[s] for s in common], [straight[s] for s in common], rtol=1e-6)
  print(f"all-gather of the preemption flag: {two[0]['flag_ms']:.2f} ms a step (2 processes, gloo)")
