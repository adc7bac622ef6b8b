"""The data-iterator state of a run, as one JSON item of a checkpoint, the same whatever the process count.

Each process packs the streams of the rows its devices hold (longjax/data/global_batches.py), so it knows
the positions of those streams only. Saving gathers every stream's position from whichever process packs
it (only process 0 writes the JSON); restoring hands each process the streams it packs under its own
process count and mesh, so a checkpoint of P processes resumes under any P'.
"""

import numpy as np
from jax.experimental import multihost_utils


def gather(state: dict) -> dict:
  """{"streams": {"s": state of stream s for every stream}, "num_streams": S} from each process's
  `GlobalBatches.get_state()` (a collective: every process calls it)."""
  count, streams = int(state["num_streams"]), state["streams"]
  keys = sorted(next(iter(streams.values())))
  local = np.zeros((count, 1 + len(keys)), np.int64)  # column 0: this process packs the stream
  for s, values in streams.items():
    local[int(s)] = [1, *(int(values[k]) for k in keys)]
  every = np.asarray(multihost_utils.process_allgather(local)).reshape(-1, count, 1 + len(keys))
  gathered = {}
  for s in range(count):
    holders = every[:, s][every[:, s, 0] == 1]
    if len(holders):  # a stream that no device's rows need (never: the devices hold every row) stays out
      gathered[str(s)] = dict(zip(keys, map(int, holders[0, 1:])))
  return {"streams": gathered, "num_streams": count}
