"""A llama.cpp GGUF file (architecture `llama`) -> `(ModelConfig, params)`.

`read(path)` opens the file (one ConversionError line for a file that is not a whole GGUF); `load(path)`
turns its `llama.*` metadata into the transformers LlamaConfig dict that `hf.config_from_hf` validates,
dequantizes every tensor to float32 (`gguf.quants.dequantize`: F32, F16, BF16, Q4_0 ... Q8_0, the K- and
IQ-quants) and places it as `hf.load` places a safetensors tensor. The weights are the dequantized ones:
logits match transformers' `from_pretrained(dir, gguf_file=...)`, not the unquantized model's.

llama.cpp's converter permutes the rows of attn_q / attn_k for its interleaved RoPE (`permute` in its
convert_hf_to_gguf.py); they are permuted back to the rotate-half layout here, as transformers does
(`reverse_permute_weights` in modeling_gguf_pytorch_utils.py).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType

from longjax.config import ModelConfig
from longjax.convert.hf import ConversionError, check_tensor_names, config_from_hf, place_tensor
from longjax.nn import scan_params

ARCHITECTURES = ("llama",)
# Tensor types that gguf.quants.dequantize reads (F32 and F16 are plain arrays).
TENSOR_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS", "TQ1_0",
                "TQ2_0", "MXFP4", "NVFP4")
# GGUF tensor name (blk.N. prefix removed) -> transformers LlamaForCausalLM name (model.layers.N. removed).
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
# llama.rope.scaling.type -> rope_type (llama.cpp's LLAMA_ROPE_SCALING_TYPE names).
_ROPE_SCALING = {"none": "default", "linear": "linear", "yarn": "yarn"}


def read(path: str) -> gguf.GGUFReader:
  """The file's reader (metadata and memory-mapped tensors); a truncated or foreign file is one ConversionError."""
  if not os.path.isfile(path):
    raise ConversionError(f"{path}: file not found; allowed: a llama.cpp .gguf file")
  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:  # noqa: BLE001 - the reader raises ValueError, IndexError, struct and numpy errors alike
    detail = f": {str(e).splitlines()[0]}" if str(e) else ""
    raise ConversionError(f"{path}: not a readable GGUF file, truncated or corrupt "
                          f"({type(e).__name__}{detail})") from None
  for tensor in reader.tensors:  # numpy clips a memory-mapped view at the end of a truncated file
    if tensor.data.nbytes != tensor.n_bytes:
      raise ConversionError(f"{path}: tensor {tensor.name!r} is cut short ({tensor.data.nbytes} of {tensor.n_bytes} "
                            "bytes): the file is truncated")
  return reader


def value(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
  """The metadata value at `key` (str, number, bool or list), or `default` when the file has none."""
  field = reader.get_field(key)
  return default if field is None else field.contents()


def _decimal(number) -> float:
  """A float32 metadata value as the shortest decimal that spells it (1e-05, not 9.999999747378752e-06)."""
  return float(str(np.float32(number)))


def _required(reader: gguf.GGUFReader, key: str, path: str) -> Any:
  result = value(reader, key)
  if result is None:
    raise ConversionError(f"{path}: metadata key {key!r} is missing")
  if isinstance(result, list):
    raise ConversionError(f"{path}: metadata key {key!r} holds one value a layer; allowed: one value for all layers")
  return result


def _rope_parameters(reader: gguf.GGUFReader, arch: str, path: str) -> dict:
  linear = value(reader, f"{arch}.rope.scale_linear")  # the key of older files
  scaling = value(reader, f"{arch}.rope.scaling.type", "linear" if linear else "none")
  if scaling not in _ROPE_SCALING:
    raise ConversionError(f"{path}: {arch}.rope.scaling.type={scaling!r} is not supported; allowed: "
                          f"{', '.join(_ROPE_SCALING)}")
  rope = {"rope_type": _ROPE_SCALING[scaling], "rope_theta": _decimal(value(reader, f"{arch}.rope.freq_base", 10000.0))}
  if scaling != "none":
    rope["factor"] = _decimal(value(reader, f"{arch}.rope.scaling.factor") or linear)
  if scaling == "yarn":
    rope["original_max_position_embeddings"] = _required(reader, f"{arch}.rope.scaling.original_context_length", path)
    for key, name in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
      if value(reader, f"{arch}.rope.scaling.{key}") is not None:
        rope[name] = _decimal(value(reader, f"{arch}.rope.scaling.{key}"))
  return rope


def hf_config(reader: gguf.GGUFReader, path: str) -> dict:
  """The transformers LlamaConfig dict of the file's `llama.*` metadata (the keys of transformers' GGUF mapping)."""
  arch = value(reader, "general.architecture")
  if arch not in ARCHITECTURES:
    raise ConversionError(f"{path}: general.architecture={arch!r} is not supported; allowed: "
                          f"{', '.join(ARCHITECTURES)}")
  get = lambda key: _required(reader, f"{arch}.{key}", path)  # noqa: E731
  heads = get("attention.head_count")
  hidden = get("embedding_length")
  head_dim = value(reader, f"{arch}.attention.key_length") or hidden // heads
  tokens = value(reader, "tokenizer.ggml.tokens")
  embedding = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
  vocab = value(reader, f"{arch}.vocab_size") or (len(tokens) if tokens else None) or (
      int(embedding.shape[1]) if embedding is not None else None)
  config = {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": hidden,
      "intermediate_size": get("feed_forward_length"), "num_hidden_layers": get("block_count"),
      "num_attention_heads": heads, "num_key_value_heads": value(reader, f"{arch}.attention.head_count_kv") or heads,
      "head_dim": head_dim, "max_position_embeddings": get("context_length"),
      "rms_norm_eps": _decimal(get("attention.layer_norm_rms_epsilon")),
      "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors),
      "rope_parameters": _rope_parameters(reader, arch, path),
  }
  if isinstance(config["num_key_value_heads"], list):
    raise ConversionError(f"{path}: metadata key '{arch}.attention.head_count_kv' holds one value a layer; "
                          "allowed: one value for all layers")
  rotary = value(reader, f"{arch}.rope.dimension_count", head_dim)
  if rotary != head_dim:
    config["partial_rotary_factor"] = rotary / head_dim
  return config


def hf_name(name: str) -> str:
  """The transformers name of a GGUF tensor name (`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`);
  names outside a LlamaForCausalLM come back unchanged."""
  block = _BLOCK.fullmatch(name)
  if block and block.group(2) in _BLOCK_NAMES:
    return f"model.layers.{block.group(1)}.{_BLOCK_NAMES[block.group(2)]}.weight"
  stem = name.removesuffix(".weight")
  return f"{_TOP_NAMES[stem]}.weight" if stem in _TOP_NAMES and name.endswith(".weight") else name


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
  """[heads * head_dim, in] rows from llama.cpp's interleaved-pair order back to rotate-half order."""
  return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _dequantize(tensor, path: str) -> np.ndarray:
  """[out, in] (or [dim]) float32 of a GGUF tensor (ggml stores shape [in, out], rows of `in`)."""
  kind = GGMLQuantizationType(tensor.tensor_type).name
  if kind not in TENSOR_TYPES:
    raise ConversionError(f"{path}: tensor {tensor.name!r} has type {kind}; allowed: {', '.join(TENSOR_TYPES)}")
  w = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
  return w.reshape(tuple(int(n) for n in reversed(tensor.shape)))


def load(path: str, *, dtype: str = "float32", scan_layers: bool = False,
         reader: gguf.GGUFReader | None = None) -> tuple[ModelConfig, dict]:
  """(ModelConfig, params as numpy `dtype`) of a llama GGUF file, dequantized; `reader`: one `read(path)` gave."""
  reader = reader or read(path)
  model = config_from_hf(hf_config(reader, path), path)
  if scan_layers:
    model = dataclasses.replace(model, scan_layers=True)
  tensors = {hf_name(t.name): t for t in reader.tensors}
  names = check_tensor_names(model, tensors, path)
  params: dict = {}
  for name, leaf in names.items():
    heads = {"q_proj": model.num_heads, "k_proj": model.num_kv_heads}.get(name.split(".")[-2])
    unpermute = (lambda w, heads=heads: _unpermute(w, heads)) if heads else None
    place_tensor(params, leaf, _dequantize(tensors[name], path), model, name=tensors[name].name, file=path,
                 dtype=dtype, transform=unpermute)
  if model.scan_layers:
    params = scan_params(params, model.num_layers)
  return model, params
