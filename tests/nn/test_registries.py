"""Registries and the config's allowed values stay equal; every entry builds a state with a fill count."""

import jax.numpy as jnp
import pytest

from longjax import config as config_lib
from longjax import nn as lnn
from longjax.config import AttentionConfig, ModelConfig


def test_attention_types_registry_equals_the_allowed_config_values():
  assert set(lnn.ATTENTION_TYPES) == set(config_lib.ATTENTION_TYPES)


def test_blocks_registry_equals_the_allowed_config_values():
  assert set(lnn.BLOCKS) == set(config_lib.BLOCK_TYPES)


@pytest.mark.parametrize("attention_type", config_lib.ATTENTION_TYPES)
def test_every_attention_type_has_a_state_with_lengths(attention_type):
  attention = AttentionConfig.of(attention_type, **({"window": 4} if attention_type == "sliding" else {}))
  config = ModelConfig(num_layers=2, hidden_size=32, num_heads=4, num_kv_heads=2, attention=attention)
  cache = lnn.init_cache(config, 3, 16)
  assert len(cache["layers"]) == 2
  assert cache["layers"][0].length.shape == (3,) and cache["layers"][0].length.dtype == jnp.int32
  assert lnn.cache_lengths(cache).tolist() == [0, 0, 0]


def test_unknown_block_is_a_config_error():
  with pytest.raises(config_lib.ConfigError, match="model.block"):
    ModelConfig(block="transformer_xl").validate()
