"""Layers that own parameters: RMSNorm, Dense (logical axes, optional LoRA), SwiGLU MLP.

Every parameter is created with logical axis names (DESIGN.md) so that
`longjax.sharding` can map it onto any mesh.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from longjax import ops

Dtype = jnp.dtype


def normal_init(std: float, axes: Sequence[str]):
  return nn.with_logical_partitioning(nn.initializers.normal(std), tuple(axes))


class RMSNorm(nn.Module):
  """x / rms(x) * scale over the last axis, statistics in float32 (as transformers' LlamaRMSNorm)."""

  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * normed.astype(self.dtype)


class Dense(nn.Module):
  """Contracts the trailing len(in_axes) dims of x with a kernel [*in, *features].

  `in_axes` and `out_axes` are the logical names of the contracted and produced
  dims. With `lora_rank > 0` a low-rank update (LoRA, Hu et al. 2021) is added:
  y = x W + (x A) B * lora_scale, with B initialised to zero so that training
  starts from the base model.
  """

  features: tuple[int, ...]
  in_axes: tuple[str, ...]
  out_axes: tuple[str, ...]
  init_std: float = 0.02
  lora_rank: int = 0
  lora_scale: float = 1.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n_in = len(self.in_axes)
    in_shape = x.shape[-n_in:]
    kernel = self.param("kernel", normal_init(self.init_std, self.in_axes + self.out_axes),
                        in_shape + tuple(self.features), self.param_dtype)
    x = x.astype(self.dtype)
    y = ops.dense(x, kernel.astype(self.dtype), n_in)
    if self.lora_rank:
      lora_a = self.param("lora_a", normal_init(1.0 / self.lora_rank, self.in_axes + ("lora",)),
                          in_shape + (self.lora_rank,), self.param_dtype)
      lora_b = self.param("lora_b", nn.with_logical_partitioning(nn.initializers.zeros, ("lora",) + self.out_axes),
                          (self.lora_rank,) + tuple(self.features), self.param_dtype)
      low = ops.dense(x, lora_a.astype(self.dtype), n_in)
      y = y + ops.dense(low, lora_b.astype(self.dtype)) * self.lora_scale
    return y


class MLP(nn.Module):
  """SwiGLU feed-forward (Shazeer 2020): down(silu(gate(x)) * up(x))."""

  hidden_size: int
  intermediate_size: int
  init_std: float = 0.02
  lora_rank: int = 0
  lora_scale: float = 1.0
  lora_targets: tuple[str, ...] = ()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _dense(self, name, features, in_axes, out_axes):
    rank = self.lora_rank if name in self.lora_targets else 0
    return Dense(features=(features,), in_axes=in_axes, out_axes=out_axes, init_std=self.init_std, lora_rank=rank,
                 lora_scale=self.lora_scale, dtype=self.dtype, param_dtype=self.param_dtype, name=f"{name}_proj")

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    gate = self._dense("gate", self.intermediate_size, ("embed",), ("mlp",))(x)
    up = self._dense("up", self.intermediate_size, ("embed",), ("mlp",))(x)
    hidden = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "mlp"))
    return self._dense("down", self.hidden_size, ("mlp",), ("embed",))(hidden)
