"""The data-iterator state of every process, as one JSON item of a checkpoint.

Each process reads its own share of the documents, so each has its own position
in the stream. Saving gathers all positions (only process 0 writes the JSON);
restoring takes this process's own.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils

_KEYS = ("epoch", "document", "offset", "num_documents", "process_index", "process_count")


def gather(state: dict[str, int]) -> dict:
  """{"processes": [state of process 0, state of process 1, ...]} (a collective: every process calls it)."""
  local = np.asarray([int(state[k]) for k in _KEYS], np.int64)
  rows = np.asarray(multihost_utils.process_allgather(local)).reshape(jax.process_count(), len(_KEYS))
  return {"processes": [dict(zip(_KEYS, map(int, row))) for row in rows]}


def own(saved: dict) -> dict[str, int]:
  """This process's state from a gathered one (a state saved by a single process is used as it is)."""
  if "processes" not in saved:
    return saved
  states = saved["processes"]
  index = jax.process_index()
  return states[index] if index < len(states) else states[0]
