"""Full-model logits parity with transformers for each scaled RoPE, past the pre-trained length."""

import numpy as np
import pytest

from hf_reference import hf_logits, tiny_hf_llama
from longjax.convert import hf
from longjax.nn import Llama

L = 32  # pre-trained length of the tiny models; inputs are longer
HEAD_DIM = 16
CASES = {
    "linear": ({"rope_type": "linear", "factor": 4.0}, L),
    # transformers' Dynamic NTK reads L from max_position_embeddings; the converter carries it over.
    "dynamic": ({"rope_type": "dynamic", "factor": 2.0}, L),
    "yarn": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L}, 4 * L),
    "yarn_mscale": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L, "mscale": 0.707,
                     "mscale_all_dim": 1.0, "beta_fast": 16.0}, 4 * L),
    "llama3": ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": L}, 8 * L),
    "longrope": ({"rope_type": "longrope", "factor": 4.0, "original_max_position_embeddings": L,
                  "short_factor": [1.0 + 0.05 * i for i in range(HEAD_DIM // 2)],
                  "long_factor": [1.0 + 0.5 * i for i in range(HEAD_DIM // 2)]}, 4 * L),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("length", [L // 2, 3 * L // 2])
def test_scaled_rope_logits_match_transformers(tmp_path, case, length):
  rope, max_positions = CASES[case]
  model = tiny_hf_llama(tmp_path, num_heads=4, num_kv_heads=2, rope_parameters=dict(rope),
                        max_position_embeddings=max_positions)
  config, params = hf.load(str(tmp_path))
  assert config.rope.rope_type == rope["rope_type"]
  assert config.resolved_head_dim == HEAD_DIM
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, length)).astype(np.int32)
  ours = np.asarray(Llama(config).apply({"params": params}, tokens))
  np.testing.assert_allclose(ours, hf_logits(model, tokens), atol=1e-4, rtol=0)


def test_export_keeps_rope_parameters(tmp_path):
  import transformers

  rope, max_positions = CASES["llama3"]
  tiny_hf_llama(tmp_path / "in", rope_parameters=dict(rope), max_position_embeddings=max_positions)
  config, params = hf.load(str(tmp_path / "in"))
  hf.save(config, params, str(tmp_path / "out"))
  reloaded = transformers.AutoConfig.from_pretrained(str(tmp_path / "out"))
  assert reloaded.rope_parameters["rope_type"] == "llama3"
  assert reloaded.rope_parameters["factor"] == 8.0
  assert hf.load(str(tmp_path / "out"))[0] == config


def test_dynamic_export_keeps_transformers_length(tmp_path):
  """transformers' Dynamic NTK reads L from max_position_embeddings: export must put longjax's L there."""
  import dataclasses

  import transformers

  from hf_reference import hf_logits as reference_logits

  tiny_hf_llama(tmp_path / "in", rope_parameters={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=L)
  config, params = hf.load(str(tmp_path / "in"))
  config = dataclasses.replace(config, max_position_embeddings=8 * L)  # a model extended past L, as after training
  hf.save(config, params, str(tmp_path / "out"))
  exported = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (1, 3 * L)).astype(np.int32)
  np.testing.assert_allclose(np.asarray(Llama(config).apply({"params": params}, tokens)),
                             reference_logits(exported, tokens), atol=1e-4, rtol=0)


def test_legacy_and_current_rope_keys_load(tmp_path):
  import json

  tiny_hf_llama(tmp_path, rope_parameters={"rope_type": "linear", "factor": 4.0})
  config_file = tmp_path / "config.json"
  hf_config = json.loads(config_file.read_text())
  # transformers >= 4.45 re-saves legacy configs with both `type` and `rope_type`; YaRN's code wrote `finetuned`
  hf_config["rope_parameters"].update(type="linear", finetuned=True)
  config_file.write_text(json.dumps(hf_config))
  assert hf.load(str(tmp_path))[0].rope.rope_type == "linear"
  hf_config["rope_scaling"] = {"type": "linear", "factor": 4.0}  # transformers < 4.45
  del hf_config["rope_parameters"]
  config_file.write_text(json.dumps(hf_config))
  loaded = hf.load(str(tmp_path))[0].rope
  assert (loaded.rope_type, loaded.factor) == ("linear", 4.0)
