"""The MEGALODON block's linear layers and biases as the reference builds them: kaiming normal with a = sqrt(5)
(std 1/sqrt(3 fan_in)) for every kernel, zero biases, each on its logical axes; kernels stored in param_dtype,
projections computed in dtype."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from longjax.config import MegalodonConfig, ModelConfig
from longjax.nn import megalodon as megalodon_lib

# Every fan-in different (width 64, value_dim 96, intermediate 160), so a kernel scaled by another's shows.
WIDTH, VALUE_DIM, FFN = 64, 96, 160
KERNELS = {"z_proj": (("embed", "mlp"), WIDTH), "v_proj": (("embed", "mlp"), WIDTH),
           "r_proj": (("embed", "mlp"), WIDTH), "h1_proj": (("embed", None), WIDTH),
           "h2_proj": (("mlp", "embed"), VALUE_DIM), "fc1": (("embed", "mlp"), WIDTH),
           "fc3": (("embed", "mlp"), WIDTH), "fc2": (("mlp", "embed"), FFN)}
BIASES = {"z_bias": ("mlp", 32), "v_bias": ("mlp", VALUE_DIM), "r_bias": ("mlp", VALUE_DIM), "h1_bias": ("embed", WIDTH)}


def _block(dtype="float32", param_dtype="float32"):
  config = ModelConfig(block="megalodon", vocab_size=64, hidden_size=WIDTH, intermediate_size=FFN, num_layers=1,
                       num_heads=2, num_kv_heads=2, dtype=dtype, param_dtype=param_dtype,
                       megalodon=MegalodonConfig(z_dim=32, value_dim=VALUE_DIM, ema_dim=2, chunk_size=4,
                                                 norm_groups=4, swiglu=True))
  return megalodon_lib.MegalodonBlock(config)


def test_kernels_follow_the_reference_he_init_biases_start_at_zero_and_dtypes_hold():
  """One init (it runs the block once) with bfloat16 parameters and compute: every kernel N(0, 1/(3 fan_in)) in
  bfloat16 on its logical axes, every projection's output bfloat16, the biases zero on theirs."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 4, WIDTH)), jnp.float32)
  block = _block(dtype="bfloat16", param_dtype="bfloat16")
  variables = jax.jit(lambda x: block.init(jax.random.key(0), x, None, None, None, capture_intermediates=True))(x)
  boxed, outputs = variables["params"], variables["intermediates"]
  for name, (axes, fan_in) in KERNELS.items():
    assert boxed[name]["kernel"].names == axes, name
    kernel = boxed[name]["kernel"].unbox()
    assert kernel.dtype == jnp.bfloat16 and kernel.shape[0] == fan_in, name
    assert outputs[name]["__call__"][0].dtype == jnp.bfloat16, name
    kernel = np.asarray(kernel, np.float32)
    std = 1.0 / math.sqrt(3 * fan_in)  # kaiming_normal_(a=sqrt(5)): gain sqrt(2 / (1 + 5)) / sqrt(fan_in)
    assert abs(kernel.std() / std - 1) < 0.1 and abs(kernel.mean()) < 0.1 * std, (name, kernel.std(), std)
  for name, (axis, width) in BIASES.items():
    assert boxed[name].names == (axis,) and boxed[name].unbox().shape == (width,), name
    assert not np.any(np.asarray(boxed[name].unbox(), np.float32)), name
