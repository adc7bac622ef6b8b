"""A broken Hugging Face directory gives one error naming the tensor or field; the main exits 2."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hf_reference import tiny_hf_llama
from longjax.config import SlidingConfig
from longjax.convert import hf


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("hf")
  tiny_hf_llama(path)
  return path


def _copy_with(src, dst, tensors=None, config=None):
  os.makedirs(dst, exist_ok=True)
  weights = load_file(str(src / hf.SAFETENSORS))
  if tensors:
    weights = tensors(weights)
  save_file(weights, str(dst / hf.SAFETENSORS))
  cfg = json.loads((src / "config.json").read_text())
  if config:
    config(cfg)
  (dst / "config.json").write_text(json.dumps(cfg))
  return dst


def test_missing_tensor_is_named(hf_dir, tmp_path):
  bad = _copy_with(hf_dir, tmp_path / "bad", tensors=lambda w: {k: v for k, v in w.items()
                                                                if k != "model.layers.1.mlp.up_proj.weight"})
  with pytest.raises(hf.ConversionError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*missing"):
    hf.load(str(bad))


def test_wrong_shape_is_named(hf_dir, tmp_path):
  def shrink(w):
    w["model.layers.0.self_attn.k_proj.weight"] = w["model.layers.0.self_attn.k_proj.weight"][:-1]
    return w

  bad = _copy_with(hf_dir, tmp_path / "bad", tensors=shrink)
  with pytest.raises(hf.ConversionError, match=r"k_proj\.weight.*shape \(63, 64\).*expected \(64, 64\)"):
    hf.load(str(bad))


def test_unsupported_architecture_is_named(hf_dir, tmp_path):
  bad = _copy_with(hf_dir, tmp_path / "bad", config=lambda c: c.update(architectures=["MistralForCausalLM"],
                                                                       model_type="mistral"))
  with pytest.raises(hf.ConversionError, match="MistralForCausalLM.*allowed: LlamaForCausalLM"):
    hf.load(str(bad))


def test_missing_config_field_is_named(hf_dir, tmp_path):
  bad = _copy_with(hf_dir, tmp_path / "bad", config=lambda c: c.pop("hidden_size"))
  with pytest.raises(hf.ConversionError, match="'hidden_size' is missing"):
    hf.load(str(bad))


def test_unknown_rope_type_lists_the_valid_ones(hf_dir, tmp_path):
  bad = _copy_with(hf_dir, tmp_path / "bad", config=lambda c: c.update(rope_parameters={"rope_type": "su",
                                                                                       "rope_theta": 1e4}))
  with pytest.raises(hf.ConversionError, match="rope_type='su'.*yarn"):
    hf.load(str(bad))


def test_export_refuses_what_transformers_would_lack(hf_dir, tmp_path):
  model, params = hf.load(str(hf_dir))
  sliding = dataclasses.replace(model, attention=dataclasses.replace(model.attention, type="sliding",
                                                                   sliding=SlidingConfig(window=8)))
  with pytest.raises(hf.ConversionError, match="attention.type='sliding'.*allowed for export: full"):
    hf.save(sliding, params, str(tmp_path / "sliding"))
  params["layers_0"]["attention"]["q_proj"]["lora_a"] = np.zeros((64, 4), np.float32)
  with pytest.raises(hf.ConversionError, match="layers_0/attention/q_proj/lora_a.*merge_lora"):
    hf.save(model, params, str(tmp_path / "lora"))
  assert not os.listdir(tmp_path)


def _main(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "longjax.convert", *args], capture_output=True, text=True, env=env,
                        timeout=120)


def test_main_prints_one_line_and_exits_2(hf_dir, tmp_path):
  bad = _copy_with(hf_dir, tmp_path / "bad", tensors=lambda w: {k: v for k, v in w.items() if "norm" not in k})
  result = _main(f"--hf_dir={bad}", f"--out_dir={tmp_path / 'out'}")
  assert result.returncode == 2, result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and "norm.weight" in lines[0], result.stderr
  assert "Traceback" not in result.stderr
