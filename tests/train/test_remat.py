"""Every remat policy gives the train step's loss the same value and gradients, with scanned layers and the
chunked loss (tests/nn/test_llama.py checks each policy on unrolled layers)."""

import dataclasses
import functools

import jax
import numpy as np
import pytest

from longjax.config import ModelConfig
from longjax.nn import REMAT_POLICIES, Llama, init_params, scan_params
from longjax.train.step import loss_fn

TINY = ModelConfig(vocab_size=53, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)


def _batch():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, TINY.vocab_size, (2, 16)).astype(np.int32)
  segments = np.repeat(np.array([[1] * 10 + [2] * 6]), 2, axis=0).astype(np.int32)  # two packed documents
  positions = np.concatenate([np.arange(10), np.arange(6)])[None].repeat(2, 0).astype(np.int32)
  return {"inputs": tokens, "targets": np.roll(tokens, -1, 1), "loss_mask": np.ones((2, 16), np.float32),
          "positions": positions, "segment_ids": segments}


def _loss_and_grads(config, params):
  grad = jax.value_and_grad(lambda p: loss_fn(p, Llama(config), _batch(), True)[0])
  return jax.jit(grad)(params)


PLAIN = dataclasses.replace(TINY, scan_layers=True)


@functools.cache
def _params_and_expected():
  params = scan_params(init_params(TINY, jax.random.key(0)), TINY.num_layers)
  return params, _loss_and_grads(PLAIN, params)


@pytest.mark.parametrize("policy", sorted(REMAT_POLICIES))
def test_remat_policy_with_scanned_layers_and_chunked_loss_gives_the_plain_gradients(policy):
  params, (expected_loss, expected) = _params_and_expected()
  loss, grads = _loss_and_grads(dataclasses.replace(PLAIN, remat_policy=policy, loss_chunk=5), params)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), grads, expected)
