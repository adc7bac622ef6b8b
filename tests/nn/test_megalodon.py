"""The MEGALODON block: chunk isolation, streaming equals the full pass, parameter count of the 7B config."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from repo_configs import load_config

from longjax.config import MegalodonConfig, ModelConfig, from_config_dict
from longjax.inference import generate, init_cache
from longjax.nn import Llama, abstract_params, init_params
from longjax.nn import megalodon as megalodon_lib
from longjax.ops import megalodon as megalodon_ops

CHUNK = 8


def megalodon_model(layers=2, chunk=CHUNK, seed=0):
  config = ModelConfig(block="megalodon", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=layers,
                       num_heads=2, num_kv_heads=2,
                       megalodon=MegalodonConfig(z_dim=16, value_dim=24, ema_dim=4, chunk_size=chunk, norm_groups=4))
  return Llama(config), init_params(config, jax.random.key(seed))


def tokens_for(batch=2, length=26, seed=1):
  return jax.random.randint(jax.random.key(seed), (batch, length), 3, 64)


def _step_norm(x, weight, bias, *, num_groups, eps=1e-5, state=None, mask=None):
  """Group norm of each step alone: the timestep norm with its running statistics frozen out."""
  batch, length, width = x.shape
  groups = x.astype(jnp.float32).reshape(batch, length, num_groups, width // num_groups)
  normed = (groups - groups.mean(-1, keepdims=True)) * jax.lax.rsqrt(groups.var(-1, keepdims=True) + eps)
  return (normed.reshape(x.shape) * (weight + 1) + bias).astype(x.dtype), state


def _zero_cema(params):
  """gamma = omega = 0: the complex EMA outputs zero, whatever it has seen."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros_like(x) if path[-1].key in ("gamma", "omega") and "cema" in str(path) else x, params)


def test_no_attention_across_chunks(monkeypatch):
  """Perturbing the first chunk changes later chunks through CEMA and the norm statistics; with CEMA's output
  zeroed and the norm reduced to each step's own statistics, later chunks do not change at all."""
  model, params = megalodon_model(layers=1)
  tokens = tokens_for(length=3 * CHUNK)
  perturbed = tokens.at[:, :CHUNK].set((tokens[:, :CHUNK] + 7) % 64)

  def compiled():  # a fresh jit for each phase: it traces whatever ops.timestep_norm is at the time
    return jax.jit(lambda p, t: model.apply({"params": p}, t))

  apply = compiled()
  later = apply(params, tokens)[:, CHUNK:] - apply(params, perturbed)[:, CHUNK:]
  assert float(jnp.max(jnp.abs(later))) > 1e-3
  monkeypatch.setattr(megalodon_lib.ops, "timestep_norm", _step_norm)
  isolated, apply = _zero_cema(params), compiled()
  out, out_perturbed = apply(isolated, tokens), apply(isolated, perturbed)
  # The head's timestep norm is frozen too (it is the same op); any change left would come from attention.
  np.testing.assert_allclose(out[:, CHUNK:], out_perturbed[:, CHUNK:], atol=1e-6)
  # ... and within a chunk attention does carry it: the first chunk's own outputs change.
  assert float(jnp.max(jnp.abs(out[:, :CHUNK] - out_perturbed[:, :CHUNK]))) > 1e-3


@pytest.mark.parametrize("scan", [False, True], ids=["layers", "scanned"])
def test_streaming_equals_the_full_pass(scan):
  """A 10-token prompt, then one token at a time across chunk boundaries (chunk 8), 2 layers."""
  model, params = megalodon_model()
  if scan:
    model = Llama(dataclasses.replace(model.config, scan_layers=True))
    params = init_params(model.config, jax.random.key(0))
  tokens = tokens_for()
  whole = jax.jit(lambda p, t: model.apply({"params": p}, t))(params, tokens)
  cache = init_cache(model.config, 2, 26)
  apply = jax.jit(lambda x, c: model.apply({"params": params}, x, cache=c))
  logits, cache = apply(tokens[:, :10], cache)
  outs = [logits]
  for t in range(10, 26):
    logits, cache = apply(tokens[:, t:t + 1], cache)
    outs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), whole, atol=1e-4)
  assert cache["layers"][0].key.shape[-2] == CHUNK if not scan else cache["layers"].key.shape[-2] == CHUNK


def test_ragged_generation_equals_each_prompt_alone():
  model, params = megalodon_model()
  rows = np.asarray(tokens_for(batch=2, length=13, seed=4))
  prompts = [rows[0, :5].tolist(), rows[1].tolist()]
  together = generate(model, params, prompts, 10)
  for i, prompt in enumerate(prompts):
    np.testing.assert_array_equal(together[i], generate(model, params, [prompt], 10)[0])


def test_megalodon_7b_parameter_count():
  config = from_config_dict(load_config("megalodon_7b.py"))
  shapes, _ = abstract_params(config.model)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert count == MEGALODON_7B_PARAMETERS, count


MEGALODON_7B_PARAMETERS = 7_385_817_088  # jax.eval_shape of configs/megalodon_7b.py (untied 32000-token embeddings)


def test_cema_parameters_follow_the_reference_init():
  _, params = megalodon_model(layers=1)
  cema = params["layers_0"]["cema"]
  width = 32
  theta = jax.nn.sigmoid(cema["theta"])
  np.testing.assert_allclose(np.sort(np.asarray(theta)),
                             np.sort(np.exp(-np.arange(1, width + 1) * np.log(width) / width)), rtol=1e-5)
  assert np.all(np.asarray(cema["gamma"][..., 1]) == 0)
  assert np.all(np.abs(np.asarray(cema["omega"])) <= 1.0)
  p, q, gamma = megalodon_ops.cema_coefficients(cema["alpha"], cema["delta"], cema["theta"], cema["gamma"])
  assert p.shape == q.shape == gamma.shape == (width, 4) and np.all(np.abs(np.asarray(q)) < 1)


def test_embeddings_follow_the_reference_gaussian_init():
  """The reference's `gaussian` init: N(0, 1/E) truncated at 3 std, on the ("vocab", "embed") axes."""
  width = 64
  config = ModelConfig(block="megalodon", vocab_size=512, hidden_size=width, num_heads=2, num_kv_heads=2)
  boxed = megalodon_lib.MegalodonBlock.embedding_init(config)(jax.random.key(0), (512, width))
  assert boxed.names == ("vocab", "embed")
  z = np.asarray(boxed.unbox()) * np.sqrt(width)  # in units of the untruncated std
  assert z.min() >= -3.0 and z.max() <= 3.0 and z.min() < -2.8 and z.max() > 2.8
  assert abs(z.std() - 0.9866) < 0.02  # the std of N(0, 1) cut at +-3


def test_cema_inits_keep_the_parameter_dtype():
  """theta and gamma in bfloat16 when the parameters are (the values checked in float32 above)."""
  theta = megalodon_lib._theta_init(jax.random.key(0), (16,), jnp.bfloat16)
  gamma = megalodon_lib._gamma_init(jax.random.key(1), (16, 4, 2), jnp.bfloat16)
  assert (theta.dtype, theta.shape, gamma.dtype, gamma.shape) == (jnp.bfloat16, (16,), jnp.bfloat16, (16, 4, 2))
  assert np.all(np.asarray(gamma[..., 1]) == 0) and np.any(np.asarray(gamma[..., 0]) != 0)
