"""The planner's per-device total: donated state is counted once (outputs written in place of their arguments)."""

import dataclasses

from repo_configs import load_config
from longjax import plan
from longjax.config import from_config_dict


def test_total_counts_aliased_outputs_once():
  memory = plan.StepMemory(state=60, arguments=100, outputs=70, aliased=60, temporaries=9)
  assert memory.total == 100 + 70 - 60 + 9
  assert dataclasses.replace(memory, aliased=0).total == 179


def test_a_compiled_step_that_donates_its_state_aliases_it():
  """The Trainer's step donates its state: XLA reports at least the state's bytes as aliased (it is in both the
  arguments and the outputs; measured: the state plus the 4-byte step), and the total is below arguments +
  outputs + temporaries by them."""
  config = plan.with_values(from_config_dict(load_config("tiny.py")), {
      "train.seq_len": 32, "train.global_batch_size": 2, "mesh.data": 1})
  memory = plan.step_memory(config)
  assert memory.state > 0 and memory.aliased > 0
  assert memory.aliased <= min(memory.arguments, memory.outputs)
  assert memory.aliased >= memory.state, memory  # parameters and optimizer state (and the step) written in place
  assert memory.total == memory.arguments + memory.outputs + memory.temporaries - memory.aliased
  assert memory.total < memory.arguments + memory.outputs + memory.temporaries
