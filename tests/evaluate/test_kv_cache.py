"""KV-cache sizes: the REFERENCES figures for LLaMA-2 13B and Llama 3 8B, and the constant-memory types."""

import dataclasses

import pytest

from longjax.config import AttentionConfig, MegalodonConfig, ModelConfig
from longjax.evaluate import kv_cache_bytes, kv_cache_size

KiB, GiB = 2**10, 2**30
LLAMA2_13B = ModelConfig(hidden_size=5120, num_layers=40, num_heads=40, num_kv_heads=40)
LLAMA3_8B = ModelConfig(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8)


def test_llama2_13b_in_float16():
  assert kv_cache_bytes(LLAMA2_13B, 1) == 800 * KiB
  assert kv_cache_bytes(LLAMA2_13B, 4096) == 3.125 * GiB
  assert kv_cache_bytes(LLAMA2_13B, 16384) == 12.5 * GiB
  assert kv_cache_bytes(LLAMA2_13B, 131072) == 100 * GiB
  assert kv_cache_bytes(LLAMA2_13B, 4096, batch_size=8, dtype="float32") == 8 * 2 * 3.125 * GiB


def test_grouped_query_attention_llama3_8b_in_bfloat16():
  assert kv_cache_bytes(LLAMA3_8B, 1, dtype="bfloat16") == 128 * KiB
  multi_head = dataclasses.replace(LLAMA3_8B, num_kv_heads=32)
  assert kv_cache_bytes(multi_head, 8192) == 4 * kv_cache_bytes(LLAMA3_8B, 8192)


def test_sliding_window_keeps_sinks_and_window():
  sliding = dataclasses.replace(LLAMA3_8B, attention=AttentionConfig.of("sliding", window=1020, sinks=4))
  per_token = kv_cache_bytes(LLAMA3_8B, 1)
  assert kv_cache_bytes(sliding, 512) == 512 * per_token
  assert kv_cache_bytes(sliding, 1024) == kv_cache_bytes(sliding, 131072) == 1024 * per_token


def test_infini_keeps_its_memory_and_one_segment():
  infini = dataclasses.replace(LLAMA3_8B, attention=AttentionConfig.of("infini", segment_len=2048))
  memory = 32 * 8 * 128 * (128 + 1) * 4  # layers * M float32[8, 128, 128] and z float32[8, 128]
  assert kv_cache_bytes(infini, 131072) == kv_cache_bytes(infini, 2048) == memory + kv_cache_bytes(LLAMA3_8B, 2048)
  assert kv_cache_bytes(infini, 100) == memory + kv_cache_bytes(LLAMA3_8B, 100)


def test_megalodon_state_is_constant():
  mega = MegalodonConfig(z_dim=256, value_dim=512, ema_dim=16, chunk_size=2048, norm_groups=32)
  config = ModelConfig(block="megalodon", hidden_size=1024, num_layers=4, num_heads=4, num_kv_heads=4, megalodon=mega)
  norm = 4 + 2 * 32 * 4  # count int32, mean and var float32[32]
  layer = 1024 * 16 * 8 + norm + 2048 * (256 + 512) * 2  # CEMA complex64[1024, 16], norm, one chunk's K/V
  assert kv_cache_bytes(config, 2048) == kv_cache_bytes(config, 10**6) == 4 * layer + norm
  assert kv_cache_bytes(config, 16) == 4 * (layer - 2032 * 768 * 2) + norm


@pytest.mark.parametrize("data, fsdp, tensor, batch, expected", [
    (1, 1, 8, 1, 1 / 8),  # 8 kv heads over 8 tensor shards
    (2, 2, 1, 4, 1 / 4),  # batch 4 over data * fsdp = 4
    (2, 1, 4, 2, 1 / 8),
    (1, 1, 16, 1, 1.0),  # 16 does not divide 8 heads: replicated
    (4, 1, 1, 2, 1.0),  # 4 does not divide a batch of 2: replicated
])
def test_per_device_share_follows_the_sharding_rules(data, fsdp, tensor, batch, expected):
  size = kv_cache_size(LLAMA3_8B, 4096, batch, "bfloat16", data=data, fsdp=fsdp, tensor=tensor)
  assert size.device_bytes == size.total_bytes * expected
  assert size.layer_bytes * 32 == size.total_bytes
