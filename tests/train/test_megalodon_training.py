"""`model.block = megalodon` through the whole trunk: training, exact resume, loading, generation, a sharded mesh."""


import jax.numpy as jnp
import numpy as np
from conftest import checkpoint_steps, read_metrics
from test_sharding import SCRIPT

import longjax
from longjax.train.loop import train_and_evaluate

# configs/megalodon_tiny.py with chunks of 16: the shared 64-token rows cross three chunk boundaries.
SPEC = "megalodon_tiny.py:chunk=16"


def test_megalodon_trains_resumes_exactly_and_loads(runner, tmp_path):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train_and_evaluate(runner.config({"train.num_steps": 8}, SPEC), straight)
  train_and_evaluate(runner.config({"train.num_steps": 4}, SPEC), resumed)
  train_and_evaluate(runner.config({"train.num_steps": 8}, SPEC), resumed)
  losses = [r["loss"] for r in read_metrics(straight)]
  assert np.mean(losses[-2:]) < np.mean(losses[:2]) - 0.5, losses  # from ~5.5 nats (uniform over bytes)
  assert [r["loss"] for r in read_metrics(resumed)] == losses
  assert checkpoint_steps(resumed) == [4, 8]

  run = longjax.load(straight)
  assert run.config.model.block == "megalodon"
  tokens = run.encode("def main(argv):\n    return 0\n")[None]
  np.testing.assert_allclose(run.logits(tokens), run.model.apply({"params": run.params}, jnp.asarray(tokens)),
                             atol=1e-6)
  greedy = np.asarray(run.generate(tokens, max_new_tokens=6, stop_at_eos=False))[0]
  sequence = tokens[0].tolist()
  for _ in range(6):
    sequence.append(int(jnp.argmax(run.logits(np.asarray([sequence]))[0, -1])))
  assert greedy.tolist() == sequence[len(tokens[0]):]


def test_megalodon_on_eight_devices_matches_one(runner, tmp_path):
  def run(name, devices, mesh):
    config = runner.config({f"mesh.{axis}": size for axis, size in mesh.items()}, SPEC)
    flags = f"--xla_force_host_platform_device_count={devices}" if devices > 1 else ""
    return runner.python(SCRIPT, config.to_json(), str(tmp_path / name), env={"XLA_FLAGS": flags})

  sharded = run("sharded", 8, {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1})
  single = run("single", 1, {"data": 1, "fsdp": 1, "tensor": 1, "sequence": 1})
  assert sharded["devices"] == 8
  np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-4)

