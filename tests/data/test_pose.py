"""PoSE positions: the paper's sampling (uniform cuts, chained uniform skips), below the target, resumable."""

import numpy as np
import pytest

from longjax.data import ByteTokenizer, PackedBatches
from longjax.data.pose import pose_positions, pose_skips

TOKENIZER = ByteTokenizer()


def test_two_chunk_skips_and_cuts_are_uniform():
  rng = np.random.default_rng(0)
  length, target, draws = 16, 64, 20000
  samples = [pose_skips(rng, length, target, 2) for _ in range(draws)]
  cuts = np.asarray([starts[1] for starts, _ in samples])
  skips = np.asarray([skips[1] for _, skips in samples])
  assert cuts.min() == 1 and cuts.max() == length - 1
  assert skips.min() == 0 and skips.max() == target - length
  for values, count in ((cuts, length - 1), (skips, target - length + 1)):
    freq = np.bincount(values)[values.min():] / draws
    np.testing.assert_allclose(freq, 1 / count, atol=4 * np.sqrt(1 / count / draws))


def test_skips_never_decrease_and_follow_the_chained_uniform():
  """u_1 ~ U{0..M}, u_2 ~ U{u_1..M}: E[u_1] = M / 2, E[u_2] = 3M / 4 (M = target - length)."""
  rng = np.random.default_rng(1)
  length, target = 12, 112
  skips = np.asarray([pose_skips(rng, length, target, 3)[1] for _ in range(20000)])
  big_m = target - length
  assert (np.diff(skips, axis=1) >= 0).all() and skips.max() <= big_m and (skips[:, 0] == 0).all()
  np.testing.assert_allclose(skips[:, 1:].mean(axis=0), [big_m / 2, 3 * big_m / 4], rtol=0.02)


def test_positions_are_distances_plus_skips_below_the_target():
  positions = pose_positions(np.random.default_rng(2), 20, 100, 3)
  steps = np.diff(positions)
  assert positions[0] == 0 and positions.max() <= 99
  assert (steps >= 1).all() and (steps > 1).sum() <= 2  # jumps only at the two cuts
  starts, skips = pose_skips(np.random.default_rng(2), 20, 100, 3)
  np.testing.assert_array_equal(positions[starts], starts + skips)


def packed(**kwargs):
  documents = [f"doc{i}:" + "abcdefghij"[i % 10] * (i * 7 % 60) for i in range(23)]
  args = dict(seq_len=16, batch_size=3, seed=0, shuffle=False, pose_target_length=64, pose_chunks=2)
  return PackedBatches(documents, TOKENIZER, **{**args, **kwargs})


@pytest.mark.parametrize("shuffle_buffer", [0, 5])
def test_packed_positions_stay_below_the_target_and_resume_exactly(shuffle_buffer):
  batches = packed(shuffle_buffer=shuffle_buffer)
  first = [next(batches) for _ in range(4)]
  state = batches.get_state()
  rest = [next(batches) for _ in range(6)]
  positions = np.concatenate([b["pose_positions"] for b in first + rest])
  assert positions.shape == (30, 16) and positions.max() < 64 and positions.max() >= 16  # past the row length
  assert len({tuple(row) for row in positions}) > 20  # each row draws its own
  resumed = packed(shuffle_buffer=shuffle_buffer)
  resumed.set_state(state)
  for want in rest:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_tokens_and_targets_are_those_of_plain_packing():
  plain, pose = packed(pose_target_length=0), packed()
  for _ in range(5):
    a, b = next(plain), next(pose)
    assert "pose_positions" in b and "pose_positions" not in a
    for key in ("inputs", "targets", "segment_ids", "positions", "loss_mask"):
      np.testing.assert_array_equal(a[key], b[key])


def test_bad_target_is_rejected():
  with pytest.raises(ValueError, match="pose_target_length=16 must exceed seq_len=16"):
    packed(pose_target_length=16)
