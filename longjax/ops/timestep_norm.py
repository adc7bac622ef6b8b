"""Timestep normalization (MEGALODON, Ma et al. 2024, arXiv 2404.08801, sec. 3.2): causal group norm.

Channels form `num_groups` contiguous groups (channel c is in group c // (D / num_groups)). At step
t each group is normalized with the mean and population variance of all its elements at the real
positions <= t, merged with the carried state; every step weighs 1 (its D/G channels are averaged
first), as in XuezheMax/megalodon `megalodon/modules/timestep_norm.py` and its CUDA kernel
(`csrc/ops/timestep_norm_kernel.cu`: per-step group moments, then a Welford merge over time):
  n_t = n_0 + #real steps <= t
  mean_t = (n_0 mean_0 + sum_s m_s) / n_t
  var_t = (n_0 (var_0 + mean_0^2) + sum_s (v_s + m_s^2)) / n_t - mean_t^2
  y_t = (x_t - mean_t) / sqrt(var_t + eps) * (weight + 1) + bias
where m_s, v_s are step s's group mean and population variance. The sums are cumulative sums over T
in float32, taken about a pivot (the carried mean, or the first real step's mean when the count is 0)
so that a large common offset does not cancel catastrophically in E[x^2] - E[x]^2.
Padding steps (mask False) neither update the statistics nor produce output (y = 0 there).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

EPSILON = 1e-5  # the reference TimestepNorm's default eps


class TimestepNormState(NamedTuple):
  """Statistics after the last real step: count int32[B] (timesteps), mean and var float32[B, G].

  A zero count means no statistics: the first real step's moments are then used alone, whatever
  mean and var hold.
  """

  count: jax.Array
  mean: jax.Array
  var: jax.Array


def init_timestep_norm_state(batch_size: int, num_groups: int) -> TimestepNormState:
  """The empty state: count 0, mean 0, var 0 (separate buffers: a donated cache may not hold one twice)."""
  shape = (batch_size, num_groups)
  return TimestepNormState(jnp.zeros((batch_size,), jnp.int32), jnp.zeros(shape, jnp.float32),
                           jnp.zeros(shape, jnp.float32))


def timestep_norm(x, weight, bias, *, num_groups: int, eps: float = EPSILON, state=None, mask=None):
  """x [B, T, D], weight/bias [D], mask bool/float [B, T] (True = real) -> (y [B, T, D] in x's dtype, state).

  `state` is a TimestepNormState or a (count [B], mean [B, G], var [B, G]) tuple; None = empty.
  """
  batch, length, dim = x.shape
  if num_groups < 1 or dim % num_groups:
    raise ValueError(f"timestep_norm: num_groups={num_groups} must be a positive divisor of the "
                     f"feature size {dim}")
  if state is None:
    state = init_timestep_norm_state(batch, num_groups)
  count0 = jnp.asarray(state[0], jnp.int32)
  mean0 = jnp.asarray(state[1], jnp.float32)
  var0 = jnp.asarray(state[2], jnp.float32)
  real = jnp.ones((batch, length), bool) if mask is None else jnp.asarray(mask) != 0

  # Per-step group moments, two-pass in float32: [B, T, G].
  groups = x.astype(jnp.float32).reshape(batch, length, num_groups, dim // num_groups)
  step_mean = groups.mean(axis=-1)
  step_var = jnp.square(groups - step_mean[..., None]).mean(axis=-1)

  first_real = jnp.argmax(real, axis=1)
  first_mean = jnp.take_along_axis(step_mean, first_real[:, None, None], axis=1)[:, 0]
  # A constant shift leaves the statistics unchanged, so the pivot needs no gradient.
  pivot = jax.lax.stop_gradient(jnp.where((count0 > 0)[:, None], mean0, first_mean))

  prior = count0.astype(jnp.float32)[:, None]
  prior_shift = mean0 - pivot
  shifted = jnp.where(real[..., None], step_mean - pivot[:, None], 0.0)
  moment2 = jnp.where(real[..., None], step_var + jnp.square(shifted), 0.0)
  count = count0[:, None] + jnp.cumsum(real, axis=1, dtype=jnp.int32)  # [B, T]
  sum1 = prior[:, None] * prior_shift[:, None] + jnp.cumsum(shifted, axis=1)
  sum2 = prior[:, None] * (var0 + jnp.square(prior_shift))[:, None] + jnp.cumsum(moment2, axis=1)
  safe_count = jnp.maximum(count, 1).astype(jnp.float32)[..., None]
  centred_mean = sum1 / safe_count
  mean = pivot[:, None] + centred_mean  # [B, T, G]
  var = jnp.maximum(sum2 / safe_count - jnp.square(centred_mean), 0.0)

  scale = jax.lax.rsqrt(var + eps)
  normed = (groups - mean[..., None]) * scale[..., None]
  y = normed.reshape(batch, length, dim) * (weight.astype(jnp.float32) + 1.0) + bias.astype(jnp.float32)
  y = jnp.where(real[..., None], y, 0.0).astype(x.dtype)

  seen = (count[:, -1] > 0)[:, None]
  final = TimestepNormState(count[:, -1], jnp.where(seen, mean[:, -1], mean0), jnp.where(seen, var[:, -1], var0))
  return y, final
