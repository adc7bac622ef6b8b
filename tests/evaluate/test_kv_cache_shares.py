"""KV-cache sizes field by field: what each CacheSize field holds, each device's share for the recurrent types
(megalodon cuts its K/V by query heads and its CEMA state by the batch only; infini cuts its memory by kv heads
too), kv_cache_table and format_bytes."""

import dataclasses

import pytest

from longjax.config import AttentionConfig, MegalodonConfig, ModelConfig
from longjax.evaluate.kv_cache import CacheSize, format_bytes, kv_cache_size, kv_cache_table

LLAMA3_8B = ModelConfig(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8)
INFINI = dataclasses.replace(LLAMA3_8B, attention=AttentionConfig.of("infini", segment_len=2048))
# num_kv_heads (unused by the block) differs from num_heads so that a cut by the wrong one shows
MEGALODON = ModelConfig(block="megalodon", hidden_size=1024, num_layers=4, num_heads=4, num_kv_heads=2,
                        megalodon=MegalodonConfig(z_dim=256, value_dim=512, ema_dim=16, chunk_size=2048,
                                                  norm_groups=32))
KV_PER_TOKEN = 2 * 8 * 128  # K and V, 8 kv heads of 128
INFINI_STATE = 8 * 128 * (128 + 1) * 4  # M float32[8, 128, 128] and z float32[8, 128]
MEGA_NORM = 4 + 2 * 32 * 4  # count int32, mean and var float32[32]
MEGA_STATE = 1024 * 16 * 8 + MEGA_NORM  # CEMA complex64[1024, 16] and the timestep-norm statistics


def _all_ints(size: CacheSize) -> bool:
  return all(type(getattr(size, f)) is int for f in ("length", "batch_size", "cached_tokens", "layer_bytes",
                                                      "state_bytes", "total_bytes", "device_bytes"))


def test_fields_of_a_full_cache():
  size = kv_cache_size(LLAMA3_8B, 100, 3, "float32")
  layer = 100 * KV_PER_TOKEN * 4 * 3
  assert size == CacheSize(length=100, batch_size=3, dtype="float32", cached_tokens=100, layer_bytes=layer,
                           state_bytes=0, total_bytes=32 * layer, device_bytes=32 * layer)
  assert _all_ints(size)


def test_fields_of_an_infini_cache_and_its_share_per_device():
  """Batch 2 over data 2, kv heads 8 over tensor 8: K/V and the memory both cut 16 ways."""
  size = kv_cache_size(INFINI, 4096, 2, "bfloat16", data=2, tensor=8)
  kv = 2048 * KV_PER_TOKEN * 2
  assert (size.length, size.batch_size, size.dtype, size.cached_tokens) == (4096, 2, "bfloat16", 2048)
  assert size.state_bytes == 2 * INFINI_STATE and size.layer_bytes == 2 * (kv + INFINI_STATE)
  assert size.total_bytes == 32 * size.layer_bytes
  assert size.device_bytes == 32 * (kv + INFINI_STATE) // 8
  assert _all_ints(size)


def test_megalodon_share_per_device():
  """Batch 2 over data 2, 4 heads over tensor 4: the chunk's K/V cut 8 ways, the CEMA and norm state 2 ways (by
  the batch only), the final norm's statistics 2 ways."""
  size = kv_cache_size(MEGALODON, 4096, 2, "bfloat16", data=2, tensor=4)
  kv = 2048 * (256 + 512) * 2
  assert size.state_bytes == 2 * MEGA_STATE and size.cached_tokens == 2048
  assert size.total_bytes == 4 * 2 * (kv + MEGA_STATE) + 2 * MEGA_NORM
  assert size.device_bytes == 4 * (2 * kv // 8 + MEGA_STATE) + MEGA_NORM
  assert _all_ints(size)


def test_defaults_are_one_row_in_float16_on_one_device():
  size = kv_cache_size(LLAMA3_8B, 5)
  assert (size.batch_size, size.dtype, size.layer_bytes) == (1, "float16", 5 * KV_PER_TOKEN * 2)
  for config in (LLAMA3_8B, INFINI, MEGALODON):
    size = kv_cache_size(config, 3000, 2)
    assert size.device_bytes == size.total_bytes


def test_sliding_cache_holds_sinks_and_window_tokens():
  sliding = dataclasses.replace(LLAMA3_8B, attention=AttentionConfig.of("sliding", window=60, sinks=4))
  assert [kv_cache_size(sliding, n).cached_tokens for n in (10, 64, 65, 10**5)] == [10, 64, 64, 64]


def test_table_is_the_size_at_each_length():
  lengths = [1, 2048, 9000]
  table = kv_cache_table(MEGALODON, lengths, 2, "float32", data=2, tensor=4)
  assert table == [kv_cache_size(MEGALODON, n, 2, "float32", data=2, tensor=4) for n in lengths]
  assert kv_cache_table(LLAMA3_8B, [5]) == [kv_cache_size(LLAMA3_8B, 5, 1, "float16")]


@pytest.mark.parametrize("n, text", [(0, "0 B"), (3.7, "3 B"), (1023, "1023 B"), (1024, "1 KiB"), (1536, "1.5 KiB"),
                                     (1234567, "1.177 MiB"), (12.5 * 2**30, "12.5 GiB"), (100 * 2**30, "100 GiB"),
                                     (3 * 2**40, "3 TiB"), (2**50, "1024 TiB")])
def test_format_bytes(n, text):
  assert format_bytes(n) == text
