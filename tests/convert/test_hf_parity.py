"""Logits parity with transformers' LlamaForCausalLM and exact weight round trips."""

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from hf_reference import hf_logits, tiny_hf_llama
from longjax.convert import hf
from longjax.nn import Llama

CASES = {
    "multi_head": dict(num_heads=4, num_kv_heads=4),
    "grouped_query": dict(num_heads=8, num_kv_heads=2, hidden_size=64),
    "tied": dict(num_heads=4, num_kv_heads=2, tie=True),
    "head_dim": dict(num_heads=4, num_kv_heads=2, head_dim=24),
}


def _tokens(vocab, batch=3, length=33, seed=1):
  return np.random.default_rng(seed).integers(0, vocab, (batch, length)).astype(np.int32)


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(tmp_path, case):
  model = tiny_hf_llama(tmp_path, **CASES[case])
  config, params = hf.load(str(tmp_path))
  tokens = _tokens(config.vocab_size)
  assert len({tuple(row) for row in tokens}) == len(tokens)
  ours = np.asarray(Llama(config).apply({"params": params}, tokens))
  ref = hf_logits(model, tokens)
  assert ours.dtype == np.float32
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_scanned_load_matches(tmp_path):
  model = tiny_hf_llama(tmp_path, num_heads=8, num_kv_heads=2)
  config, params = hf.load(str(tmp_path), scan_layers=True)
  assert params["layers"]["attention"]["q_proj"]["kernel"].shape[0] == config.num_layers
  tokens = _tokens(config.vocab_size)
  np.testing.assert_allclose(np.asarray(Llama(config).apply({"params": params}, tokens)),
                             hf_logits(model, tokens), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_bit_identical(tmp_path, dtype):
  import transformers

  tiny_hf_llama(tmp_path / "in", num_heads=8, num_kv_heads=2, dtype=dtype)
  torch_dtype = "bfloat16" if dtype == torch.bfloat16 else "float32"
  config, params = hf.load(str(tmp_path / "in"))
  hf.save(config, params, str(tmp_path / "out"), torch_dtype=torch_dtype)
  before, after = load_file(str(tmp_path / "in" / hf.SAFETENSORS)), load_file(str(tmp_path / "out" / hf.SAFETENSORS))
  assert sorted(before) == sorted(after)
  for name in before:
    assert before[name].dtype == after[name].dtype, name
    np.testing.assert_array_equal(before[name].view(np.uint8), after[name].view(np.uint8), err_msg=name)
  reloaded = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
  tokens = _tokens(config.vocab_size)
  original = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "in")).eval()
  np.testing.assert_array_equal(hf_logits(reloaded, tokens), hf_logits(original, tokens))


def test_sharded_save_and_load(tmp_path):
  model = tiny_hf_llama(tmp_path / "in")
  config, params = hf.load(str(tmp_path / "in"))
  hf.save(config, params, str(tmp_path / "out"), max_shard_bytes=20_000)
  assert (tmp_path / "out" / hf.SAFETENSORS_INDEX).exists()
  config2, params2 = hf.load(str(tmp_path / "out"))
  assert config2 == config
  tokens = _tokens(config.vocab_size)
  np.testing.assert_allclose(np.asarray(Llama(config2).apply({"params": params2}, tokens)),
                             hf_logits(model, tokens), atol=1e-4, rtol=0)
