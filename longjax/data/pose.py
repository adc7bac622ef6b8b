"""PoSE position ids (Zhu et al. 2023, arXiv 2309.10400; dwzhu-pku/PoSE): long distances from short rows.

A row of length L is cut into N chunks at N - 1 distinct cut points drawn uniformly from 1..L-1. Chunk 0
keeps its positions; chunk i >= 1 is shifted by a skip u_i drawn uniformly from {u_{i-1}, ..., L_t - L}
(u_0 = 0), so skips never decrease and no position reaches the target length L_t. A packed row is
one sequence here, as in the reference code: documents masked from each other still see their own
distances plus the skips between them, which is all that RoPE reads.
"""

import numpy as np


def pose_skips(rng: np.random.Generator, length: int, target_length: int, chunks: int) -> tuple[np.ndarray,
                                                                                                 np.ndarray]:
  """(chunk starts int64[N] with starts[0] = 0, skips int64[N] with skips[0] = 0) for a row of `length` tokens."""
  cuts = np.sort(rng.choice(np.arange(1, length), size=chunks - 1, replace=False))
  skips = [0]
  for _ in range(chunks - 1):
    skips.append(int(rng.integers(skips[-1], target_length - length + 1)))
  return np.concatenate([[0], cuts]), np.asarray(skips)


def pose_positions(rng: np.random.Generator, length: int, target_length: int, chunks: int) -> np.ndarray:
  """int32[length] PoSE position ids of one row: token index plus the skip of its chunk."""
  starts, skips = pose_skips(rng, length, target_length, chunks)
  index = np.arange(length)
  return (index + skips[np.searchsorted(starts, index, side="right") - 1]).astype(np.int32)
