"""The data-iterator state of every process, as one JSON item of a checkpoint.

Each process reads its own share of the documents, so each has its own position
in the stream. Saving gathers all positions (only process 0 writes the JSON);
restoring takes this process's own. A state is a flat dict of integers whose keys are the same in
every process (the packer's position and its shuffle buffer's, see longjax/data/packing.py).
"""

import jax
import numpy as np
from jax.experimental import multihost_utils


def gather(state: dict[str, int]) -> dict:
  """{"processes": [state of process 0, state of process 1, ...]} (a collective: every process calls it)."""
  keys = sorted(state)
  local = np.asarray([int(state[k]) for k in keys], np.int64)
  rows = np.asarray(multihost_utils.process_allgather(local)).reshape(jax.process_count(), len(keys))
  return {"processes": [dict(zip(keys, map(int, row))) for row in rows]}


def own(saved: dict) -> dict[str, int]:
  """This process's state from a gathered one (a state saved by a single process is used as it is)."""
  if "processes" not in saved:
    return saved
  states = saved["processes"]
  index = jax.process_index()
  return states[index] if index < len(states) else states[0]
