"""The model: parameter counts without allocation, scan/unscan and remat equivalence, logical axes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from repo_configs import load_config

from longjax.config import ModelConfig, from_config_dict
from longjax.nn import REMAT_POLICIES, Llama, abstract_params, init_params, scan_params

SMALL = ModelConfig(vocab_size=101, hidden_size=48, intermediate_size=96, num_layers=3, num_heads=4, num_kv_heads=2)


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("config_file, expected", [("llama2_7b.py", 6_738_415_616),
                                                    ("llama3_8b.py", 8_030_261_248)])
def test_full_size_parameter_counts_without_allocating(config_file, expected):
  model = from_config_dict(load_config(config_file)).model
  shapes, axes = abstract_params(model)
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(shapes))
  assert _count(shapes) == expected
  assert axes["layers"]["attention"]["q_proj"]["kernel"] == jax.sharding.PartitionSpec(
      "layers", "embed", "heads", "head_dim")


def test_every_parameter_has_logical_axes():
  shapes, axes = abstract_params(SMALL)
  for shape, spec in zip(jax.tree.leaves(shapes), jax.tree.leaves(axes, is_leaf=lambda x: x is None or
                                                                   isinstance(x, jax.sharding.PartitionSpec))):
    assert spec is not None and len(spec) == len(shape.shape), (shape, spec)


def _tokens():
  return jax.random.randint(jax.random.key(3), (2, 16), 0, SMALL.vocab_size)


def test_scan_layers_gives_the_same_logits():
  params = init_params(SMALL, jax.random.key(0))
  scanned = dataclasses.replace(SMALL, scan_layers=True)
  ref = jax.jit(Llama(SMALL).apply)({"params": params}, _tokens())
  out = jax.jit(Llama(scanned).apply)({"params": scan_params(params, SMALL.num_layers)}, _tokens())
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=0)


def _grads(config, params):
  tokens = _tokens()

  def loss(p):
    logits = Llama(config).apply({"params": p}, tokens)
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  return jax.jit(jax.grad(loss))(params)


@pytest.mark.parametrize("policy, scan", [(p, False) for p in sorted(REMAT_POLICIES)] + [("full", True)])
def test_remat_policies_give_the_same_gradients(policy, scan):
  base = dataclasses.replace(SMALL, scan_layers=scan)
  params = init_params(base, jax.random.key(0))
  ref = _grads(base, params)
  got = _grads(dataclasses.replace(base, remat_policy=policy), params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5), got, ref)


def test_remat_really_recomputes():
  """'full' remat recomputes the forward matmuls in the backward pass: the compiled gradient has more dots."""
  params = init_params(SMALL, jax.random.key(0))
  dots = {}
  for policy in ("none", "full"):
    config = dataclasses.replace(SMALL, remat_policy=policy)
    hlo = jax.jit(lambda p, config=config: _grads(config, p)).lower(params).as_text(dialect="hlo")
    dots[policy] = hlo.count(" dot(")
  assert dots["full"] > dots["none"], dots


def test_bfloat16_compute_returns_float32_logits():
  config = dataclasses.replace(SMALL, dtype="bfloat16")
  params = init_params(config, jax.random.key(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  logits = jax.jit(Llama(config).apply)({"params": params}, _tokens())
  assert logits.dtype == jnp.float32
  ref = jax.jit(Llama(SMALL).apply)({"params": params}, _tokens())
  assert float(jnp.max(jnp.abs(logits - ref))) < 0.1


def test_tied_embeddings_have_no_lm_head():
  params = init_params(dataclasses.replace(SMALL, tie_embeddings=True), jax.random.key(0))
  assert "lm_head" not in params
