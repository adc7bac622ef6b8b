"""Evaluation and generation across processes (jax.distributed, gloo CPU collectives on 127.0.0.1): a trained run
restored with `longjax.load(workdir, mesh=...)` over fsdp=2 x tensor=2, each process holding only its devices'
blocks, gives on 2 processes x 2 devices the perplexities, loss by position, logits and greedy tokens of 1 process
x 4 devices; `dtype="bfloat16"` restores every floating parameter as bfloat16 (its logits:
tests/train/test_gcs_workdir.py). The generate main on 2 processes
(launch/local.py) prints, once, the text of 1 process.

Three launches (2 processes, 1, then the main on 2) carry every check, since each pays imports and compilation.
"""

import json
import subprocess
import sys

import numpy as np

from train.conftest import ABSL_LOG_LINE, REPO
from processes import run_workers

# Every process runs this; argv: the workdir. It joins the run as the mains do (cli.initialize_distributed reads
# JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID).
WORKER = r"""
import json, sys
from longjax import cli, sharding
from longjax.config import DistributedConfig, MeshConfig
cli.initialize_distributed(DistributedConfig())
import jax
import numpy as np
import longjax
from longjax.evaluate.corpus import essays
from longjax.evaluate.tasks import TASKS, EvalRun, TaskOptions

workdir = sys.argv[1]
mesh = sharding.make_mesh(MeshConfig(data=1, fsdp=2, tensor=2))
run = longjax.load(workdir, mesh=mesh)
half = longjax.load(workdir, mesh=mesh, dtype="bfloat16")

def device_bytes(params):
  held = {}
  for leaf in jax.tree.leaves(params):
    for shard in leaf.addressable_shards:
      held[shard.device.id] = held.get(shard.device.id, 0) + shard.data.nbytes
  return max(held.values())

text = essays()
options = TaskOptions(lengths=(64,), num_bins=4, texts=tuple(text[i * 500:(i + 1) * 500] for i in range(3)))
evaluation = EvalRun(run.config, {"own": run.config}, run.params, run.tokenizer)
with sharding.use_mesh(mesh):
  perplexity = TASKS["perplexity"].run(evaluation, options).results["own"]
  by_position = TASKS["loss_by_position"].run(evaluation, options).results["own"]
prompts = [[1, 105, 109, 112], [1, 100, 101, 102, 32, 102, 40, 120]]
result = {
    "process": jax.process_index(), "processes": jax.process_count(),
    "model_bytes": sum(x.nbytes for x in jax.tree.leaves(run.params)),
    "device_bytes": device_bytes(run.params), "half_device_bytes": device_bytes(half.params),
    "half_dtypes": sorted({str(x.dtype) for x in jax.tree.leaves(half.params)}),
    "perplexity": [r["loss"] for r in perplexity], "loss_by_position": by_position["loss"],
    "logits": np.asarray(run.logits("import os"))[0, :, :8].tolist(),
    "tokens": np.asarray(run.generate(prompts, max_new_tokens=12, stop_at_eos=False)).tolist(),
    "text": run.generate("def main():", max_new_tokens=16),
}
print("RESULT " + json.dumps(result), flush=True)
"""


def _run(runner, processes: int, workdir: str) -> list[dict]:
  """WORKER in `processes` processes of 4 // processes fake CPU devices, joined through JAX's environment."""
  return run_workers(runner.env, processes, lambda index, address: [sys.executable, "-c", WORKER, workdir],
                     lambda index, address: {"JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": str(processes),
                                             "JAX_PROCESS_ID": str(index)} if processes > 1 else {})


def test_evaluation_and_generation_do_not_depend_on_the_process_count(runner, trained_workdir):
  two = _run(runner, 2, trained_workdir)
  (one,) = _run(runner, 1, trained_workdir)
  assert [(r["process"], r["processes"]) for r in two + [one]] == [(0, 2), (1, 2), (0, 1)]

  for result in two + [one]:
    # Each device holds its blocks: a quarter of most parameters (the 259-token vocabulary stays whole on tensor=2).
    assert result["device_bytes"] < 0.45 * result["model_bytes"], result
    assert result["half_dtypes"] == ["bfloat16"]
    assert result["half_device_bytes"] == result["device_bytes"] // 2

  # Every process gets the whole result, the same as one process's.
  for result in two:
    for key in ("perplexity", "loss_by_position", "logits"):
      np.testing.assert_allclose(result[key], one[key], rtol=1e-5, err_msg=key)
    assert result["tokens"] == one["tokens"] and result["text"] == one["text"]
  assert len(one["perplexity"]) == 1 and len(one["loss_by_position"]) == 4 and len(one["logits"]) == 10  # BOS + 9
  assert np.asarray(one["tokens"]).shape == (2, 12)

  # The generate main, as launch/local.py starts it on 2 processes, its mesh from --config: process 0 alone prints.
  proc = subprocess.run([sys.executable, "launch/local.py", "--num_processes=2", "--devices_per_process=2", "--",
                         sys.executable, "-m", "longjax.generate", f"--workdir={trained_workdir}",
                         "--prompt=def main():", "--max_new_tokens=16", "--config=configs/base.py",
                         "--config.mesh.data=1", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"],
                        cwd=REPO, env=runner.env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-4000:]
  printed = [line for line in proc.stdout.splitlines()  # without gloo's connection notices and absl's log lines
             if "[Gloo]" not in line and "peer ranks" not in line and not ABSL_LOG_LINE.match(line.partition("] ")[2])]
  # process 1 prints no text of its own (gloo's notice can arrive split over two lines: "[1] " and its rest)
  assert not [line for line in printed if not line.startswith("[0] ") and line.partition("] ")[2].strip()], printed
  printed = [line for line in printed if line.startswith("[0] ")]
  assert "\n".join(printed) == "\n".join(f"[0] {line}" for line in ("def main():" + one["text"]).split("\n"))
