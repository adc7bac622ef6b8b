"""Hugging Face LLaMA <-> longjax parameters.

`load(path)` reads a transformers LLaMA directory (config.json plus
`model.safetensors` or a sharded `model.safetensors.index.json`) into
`(ModelConfig, params)`; `save(model_config, params, path)` writes a directory
that `transformers.LlamaForCausalLM.from_pretrained` opens. Both directions are
exact: weights are transposed and reshaped, never recomputed.

transformers stores q/k in the rotate-half RoPE layout already (its conversion
script permuted Meta's interleaved weights), which is the layout longjax uses,
so no permutation happens here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable

import ml_dtypes
import numpy as np
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from longjax.config import ConfigError, DataConfig, ModelConfig, RopeConfig, model_config_from_dict
from longjax.data.tokenizer import HuggingFaceTokenizer
from longjax.nn import scan_params, unscan_params
from longjax.nn.attention import attention_type

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# A transformers directory's tokenizer: tokenizer.json (+ tokenizer_config.json), else a SentencePiece model.
TOKENIZER_JSON, TOKENIZER_CONFIG, SENTENCEPIECE_MODEL = "tokenizer.json", "tokenizer_config.json", "tokenizer.model"
_TORCH_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_ROPE_KEYS = tuple(f.name for f in dataclasses.fields(RopeConfig))
# longjax rope keys that transformers' config does not know (written back only when set).
_LONGJAX_ONLY_ROPE_KEYS = ("alpha",)
_LONGJAX_ONLY_ROPE_TYPES = ("ntk", "dynamic_yarn")
# Attention that transformers' LlamaForCausalLM computes the same at inference (S2 shifts groups only in training).
# Keys some checkpoints carry that transformers does not read (YaRN's original code wrote `finetuned`).
_IGNORED_ROPE_KEYS = ("finetuned",)


class ConversionError(ConfigError):
  """A Hugging Face directory that cannot be converted; the message names the file, tensor or field."""


# ---------------------------------------------------------------------------------------------- config


def _rope_from_hf(hf: dict, path: str) -> RopeConfig:
  rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  legacy_type = rope.pop("type", None)  # transformers < 4.45 spelled it `type`; later ones keep both
  rope.setdefault("rope_type", legacy_type or "default")
  for key in _IGNORED_ROPE_KEYS:
    if rope.pop(key, None) is not None:
      logging.warning("%s: rope_parameters.%s is ignored (transformers ignores it too)", path, key)
  rope.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
  if "partial_rotary_factor" in hf:
    rope.setdefault("partial_rotary_factor", hf["partial_rotary_factor"])
  if rope["rope_type"] == "dynamic":
    # transformers' Dynamic NTK takes L from max_position_embeddings, whatever else the config says.
    rope["original_max_position_embeddings"] = hf.get("max_position_embeddings")
  elif rope["rope_type"] in ("yarn", "dynamic_yarn", "llama3", "longrope"):
    # transformers falls back on these for L (Phi-3 keeps it at the top level).
    rope.setdefault("original_max_position_embeddings",
                    hf.get("original_max_position_embeddings", hf.get("max_position_embeddings")))
  if rope["rope_type"] == "longrope" and rope.get("factor") is None and rope.get("original_max_position_embeddings"):
    rope["factor"] = hf["max_position_embeddings"] / rope["original_max_position_embeddings"]
  unknown = sorted(set(rope) - set(_ROPE_KEYS))
  if unknown:
    raise ConversionError(f"{path}: rope_parameters.{unknown[0]} is not supported; known: {', '.join(_ROPE_KEYS)}")
  for key in ("short_factor", "long_factor"):
    if rope.get(key) is not None:
      rope[key] = tuple(float(v) for v in rope[key])
  for key in ("rope_theta", "factor", "partial_rotary_factor"):
    if rope.get(key) is not None:
      rope[key] = float(rope[key])
  return RopeConfig(**rope)


def config_from_hf(hf: dict, path: str = "config.json") -> ModelConfig:
  """A validated ModelConfig from a transformers LlamaConfig dict."""
  architectures = hf.get("architectures") or ["LlamaForCausalLM"]
  if hf.get("model_type", "llama") != "llama" or architectures[0] != "LlamaForCausalLM":
    raise ConversionError(f"{path}: architecture {architectures[0]!r} (model_type {hf.get('model_type')!r}) "
                          "is not supported; allowed: LlamaForCausalLM (model_type 'llama')")
  for key, supported in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
    if hf.get(key, supported) != supported:
      raise ConversionError(f"{path}: {key}={hf[key]!r} is not supported; allowed: {supported!r}")
  try:
    required = {k: hf[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads")}
  except KeyError as e:
    raise ConversionError(f"{path}: field {e.args[0]!r} is missing") from None
  model = {
      "vocab_size": required["vocab_size"],
      "hidden_size": required["hidden_size"],
      "intermediate_size": required["intermediate_size"],
      "num_layers": required["num_hidden_layers"],
      "num_heads": required["num_attention_heads"],
      "num_kv_heads": hf.get("num_key_value_heads") or required["num_attention_heads"],
      "head_dim": hf.get("head_dim"),
      "max_position_embeddings": hf.get("max_position_embeddings", 2048),
      "rms_norm_eps": hf.get("rms_norm_eps", 1e-6),
      "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
      "initializer_range": hf.get("initializer_range", 0.02),
      "rope": dataclasses.asdict(_rope_from_hf(hf, path)),
  }
  if model["head_dim"] == model["hidden_size"] // model["num_heads"]:
    model["head_dim"] = None
  try:
    return model_config_from_dict(model)
  except ConfigError as e:
    raise ConversionError(f"{path}: {e}") from None


def config_to_hf(model: ModelConfig, torch_dtype: str = "float32") -> dict:
  """The transformers LlamaConfig dict of a ModelConfig (rope keys under `rope_parameters`).

  For Dynamic NTK, max_position_embeddings is written as the rope's L, since transformers reads L there.
  """
  rope = {k: v for k, v in dataclasses.asdict(model.rope).items()
          if v is not None and k not in _LONGJAX_ONLY_ROPE_KEYS and k != "partial_rotary_factor"}
  for key in ("short_factor", "long_factor"):
    if key in rope:
      rope[key] = list(rope[key])
  if model.rope.rope_type == "dynamic":  # its L travels as max_position_embeddings (below)
    rope.pop("original_max_position_embeddings", None)
  if model.block != "llama":
    raise ConversionError(f"model.block={model.block!r} has no transformers LlamaForCausalLM equivalent; "
                          "allowed for export: llama")
  attention = model.attention
  if not attention_type(model).evaluates_plain(attention):
    raise ConversionError(f"model.attention.type={attention.type!r} (s2.at_eval={attention.s2.at_eval}) has no "
                          "transformers equivalent; allowed for export: full, or s2 with s2.at_eval=False")
  if model.rope.rope_type in _LONGJAX_ONLY_ROPE_TYPES:
    raise ConversionError(f"model.rope.rope_type={model.rope.rope_type!r} has no transformers equivalent; "
                          f"allowed for export: any but {', '.join(_LONGJAX_ONLY_ROPE_TYPES)}")
  hf = {
      "architectures": ["LlamaForCausalLM"],
      "model_type": "llama",
      "vocab_size": model.vocab_size,
      "hidden_size": model.hidden_size,
      "intermediate_size": model.intermediate_size,
      "num_hidden_layers": model.num_layers,
      "num_attention_heads": model.num_heads,
      "num_key_value_heads": model.num_kv_heads,
      "head_dim": model.resolved_head_dim,
      # transformers' Dynamic NTK reads its L from max_position_embeddings.
      "max_position_embeddings": (model.rope.original_max_position_embeddings
                                  if model.rope.rope_type == "dynamic" else model.max_position_embeddings),
      "rms_norm_eps": model.rms_norm_eps,
      "tie_word_embeddings": model.tie_embeddings,
      "initializer_range": model.initializer_range,
      "hidden_act": "silu",
      "attention_bias": False,
      "mlp_bias": False,
      "rope_theta": model.rope.rope_theta,
      "rope_parameters": rope,
      "dtype": torch_dtype,
      "torch_dtype": torch_dtype,
  }
  if model.rope.partial_rotary_factor != 1.0:
    hf["partial_rotary_factor"] = model.rope.partial_rotary_factor
  return hf


# ---------------------------------------------------------------------------------------------- weights


def _layer_names(i: int) -> dict[str, tuple[str, ...]]:
  """HF tensor name -> path in a longjax layer tree (unscanned)."""
  prefix = f"model.layers.{i}."
  return {
      prefix + "self_attn.q_proj.weight": ("attention", "q_proj", "kernel"),
      prefix + "self_attn.k_proj.weight": ("attention", "k_proj", "kernel"),
      prefix + "self_attn.v_proj.weight": ("attention", "v_proj", "kernel"),
      prefix + "self_attn.o_proj.weight": ("attention", "o_proj", "kernel"),
      prefix + "mlp.gate_proj.weight": ("mlp", "gate_proj", "kernel"),
      prefix + "mlp.up_proj.weight": ("mlp", "up_proj", "kernel"),
      prefix + "mlp.down_proj.weight": ("mlp", "down_proj", "kernel"),
      prefix + "input_layernorm.weight": ("input_norm", "scale"),
      prefix + "post_attention_layernorm.weight": ("post_attention_norm", "scale"),
  }


def _to_longjax(leaf: tuple[str, ...], w: np.ndarray, model: ModelConfig) -> np.ndarray:
  """HF [out, in] layout -> longjax kernel layout."""
  heads, kv_heads, head_dim, hidden = model.num_heads, model.num_kv_heads, model.resolved_head_dim, model.hidden_size
  name = leaf[-2] if leaf[-1] == "kernel" else leaf[-1]
  if name == "q_proj":
    return w.T.reshape(hidden, heads, head_dim)
  if name in ("k_proj", "v_proj"):
    return w.T.reshape(hidden, kv_heads, head_dim)
  if name == "o_proj":
    return w.T.reshape(heads, head_dim, hidden)
  if leaf[-1] == "kernel" or name == "lm_head":
    return w.T
  return w


def _to_hf(leaf: tuple[str, ...], w: np.ndarray) -> np.ndarray:
  name = leaf[-2] if leaf[-1] == "kernel" else leaf[-1]
  if name in ("q_proj", "k_proj", "v_proj"):
    return w.reshape(w.shape[0], -1).T
  if name == "o_proj":
    return w.reshape(-1, w.shape[-1]).T
  if leaf[-1] == "kernel" or name == "lm_head":
    return w.T
  return w


def _expected_hf_shape(leaf: tuple[str, ...], model: ModelConfig) -> tuple[int, ...]:
  heads, kv_heads, head_dim, hidden = model.num_heads, model.num_kv_heads, model.resolved_head_dim, model.hidden_size
  inter, vocab = model.intermediate_size, model.vocab_size
  name = leaf[-2] if leaf[-1] == "kernel" else leaf[-1]
  return {
      "q_proj": (heads * head_dim, hidden), "k_proj": (kv_heads * head_dim, hidden),
      "v_proj": (kv_heads * head_dim, hidden), "o_proj": (hidden, heads * head_dim),
      "gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter),
      "embedding": (vocab, hidden), "lm_head": (vocab, hidden),
  }.get(name, (hidden,))


def _name_map(model: ModelConfig) -> dict[str, tuple[str, ...]]:
  """Every HF tensor name -> its path in an unscanned longjax param tree."""
  names = {"model.embed_tokens.weight": ("embed_tokens", "embedding"), "model.norm.weight": ("norm", "scale")}
  if not model.tie_embeddings:
    names["lm_head.weight"] = ("lm_head",)
  for i in range(model.num_layers):
    names.update({k: (f"layers_{i}",) + v for k, v in _layer_names(i).items()})
  return names


def _tensor_files(path: str) -> dict[str, str]:
  """HF tensor name -> safetensors file holding it."""
  index = os.path.join(path, SAFETENSORS_INDEX)
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    return {name: os.path.join(path, file) for name, file in weight_map.items()}
  single = os.path.join(path, SAFETENSORS)
  if not os.path.exists(single):
    raise ConversionError(f"{path}: no {SAFETENSORS} or {SAFETENSORS_INDEX}; allowed: a transformers LLaMA "
                          "directory saved with safetensors")
  with safe_open(single, framework="numpy") as f:
    return {name: single for name in f.keys()}


def _set(tree: dict, leaf: tuple[str, ...], value) -> None:
  for key in leaf[:-1]:
    tree = tree.setdefault(key, {})
  tree[leaf[-1]] = value


def _get(tree: dict, leaf: tuple[str, ...]):
  for key in leaf:
    tree = tree[key]
  return tree


def check_tensor_names(model: ModelConfig, available, path: str) -> dict[str, tuple[str, ...]]:
  """HF tensor name -> longjax path of every tensor `model` needs; a missing or foreign name in `available` fails."""
  names = _name_map(model)
  missing = [n for n in names if n not in available]
  if missing:
    raise ConversionError(f"{path}: tensor {missing[0]!r} is missing ({len(missing)} missing in all)")
  extra = sorted(n for n in available if n not in names and not n.endswith("rotary_emb.inv_freq"))
  if extra and not (model.tie_embeddings and extra == ["lm_head.weight"]):
    raise ConversionError(f"{path}: tensor {extra[0]!r} is not part of a LlamaForCausalLM with this config")
  return names


def place_tensor(params: dict, leaf: tuple[str, ...], w: np.ndarray, model: ModelConfig, *, name: str, file: str,
                 dtype: str = "float32", transform: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
  """Put the HF tensor `name` (w [out, in], or [dim]) at `leaf` of `params` in longjax's layout, shape-checked;
  `transform` (same shape) runs after the check (GGUF's q/k row order)."""
  expected = _expected_hf_shape(leaf, model)
  if tuple(w.shape) != expected:
    raise ConversionError(f"{file}: tensor {name!r} has shape {tuple(w.shape)}; expected {expected}")
  if transform is not None:
    w = transform(w)
  _set(params, leaf, _to_longjax(leaf, w, model).astype(_TORCH_DTYPES[dtype]))


def load_config(path: str) -> ModelConfig:
  """The ModelConfig of a transformers LLaMA directory's config.json."""
  config_path = os.path.join(path, "config.json")
  if not os.path.isfile(config_path):
    raise ConversionError(f"{config_path}: file not found; allowed: a transformers LLaMA directory")
  with open(config_path) as f:
    try:
      hf = json.load(f)
    except json.JSONDecodeError as e:
      raise ConversionError(f"{config_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
  return config_from_hf(hf, config_path)


def tokenizer_data(path: str) -> DataConfig:
  """The DataConfig of a transformers directory's own tokenizer (tokenizer.json first, as AutoTokenizer prefers
  it; the byte tokenizer when it has none), tokenizer_path inside `path`. BOS is added when tokenizer_config.json
  says add_bos_token (absent: when tokenizer.json's post-processor adds one; a SentencePiece model adds one, as
  LlamaTokenizer does)."""
  tokenizer_json, sentencepiece = os.path.join(path, TOKENIZER_JSON), os.path.join(path, SENTENCEPIECE_MODEL)
  if os.path.isfile(tokenizer_json):
    return DataConfig(tokenizer="hf", tokenizer_path=tokenizer_json,
                      add_bos=HuggingFaceTokenizer(tokenizer_json).adds_bos)
  if not os.path.isfile(sentencepiece):
    return DataConfig()
  add_bos, config_path = True, os.path.join(path, TOKENIZER_CONFIG)
  if os.path.isfile(config_path):
    with open(config_path) as f:
      try:
        add_bos = bool(json.load(f).get("add_bos_token", True))
      except json.JSONDecodeError as e:
        raise ConversionError(f"{config_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
  return DataConfig(tokenizer="sentencepiece", tokenizer_path=sentencepiece, add_bos=add_bos)


def load(path: str, *, dtype: str = "float32", scan_layers: bool = False) -> tuple[ModelConfig, dict]:
  """(ModelConfig, params as numpy `dtype`) of a transformers LLaMA directory."""
  model = load_config(path)
  if scan_layers:
    model = dataclasses.replace(model, scan_layers=True)
  files = _tensor_files(path)
  names = check_tensor_names(model, files, path)
  params: dict = {}
  by_file: dict[str, list[str]] = {}
  for name in names:
    by_file.setdefault(files[name], []).append(name)
  for file, file_names in by_file.items():
    with safe_open(file, framework="numpy") as f:
      for name in file_names:
        place_tensor(params, names[name], f.get_tensor(name), model, name=name, file=file, dtype=dtype)
  if model.scan_layers:
    params = scan_params(params, model.num_layers)
  return model, params


def _check_exportable(params: dict, exported: set[tuple[str, ...]]) -> None:
  """Refuse parameters that transformers' LlamaForCausalLM would silently lack (LoRA factors, gates)."""
  extra = [leaf for leaf in traverse_util.flatten_dict(params) if leaf not in exported]
  if not extra:
    return
  hint = " (merge LoRA first: longjax.nn.lora.merge_lora)" if extra[0][-1].startswith("lora_") else ""
  raise ConversionError(f"params: {'/'.join(extra[0])} has no place in a transformers LlamaForCausalLM{hint}; "
                        "allowed for export: the parameters of a plain LLaMA")


def save(model: ModelConfig, params: dict, path: str, *, torch_dtype: str = "float32",
         max_shard_bytes: int = 5 * 2**30) -> None:
  """Write `path/config.json` and safetensors (sharded with an index past `max_shard_bytes`)."""
  params = {k: v for k, v in params.items()}
  if "layers" in params:
    params = unscan_params(params, model.num_layers)
  np_dtype = _TORCH_DTYPES[torch_dtype]
  names = _name_map(model)
  _check_exportable(params, set(names.values()))
  tensors: dict[str, np.ndarray] = {}
  for name, leaf in names.items():
    try:
      w = np.asarray(_get(params, leaf))
    except KeyError:
      raise ConversionError(f"params: {'/'.join(leaf)} is missing (for HF tensor {name!r})") from None
    tensors[name] = np.ascontiguousarray(_to_hf(leaf, w).astype(np_dtype))
  hf_config = config_to_hf(model, torch_dtype)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, w in tensors.items():
    if shards[-1] and size + w.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = w
    size += w.nbytes
  if len(shards) == 1:
    save_file(shards[0], os.path.join(path, SAFETENSORS), metadata={"format": "pt"})
    return
  weight_map: dict[str, Any] = {}
  for i, shard in enumerate(shards):
    file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, os.path.join(path, file), metadata={"format": "pt"})
    weight_map.update({name: file for name in shard})
  total = sum(w.nbytes for w in tensors.values())
  with open(os.path.join(path, SAFETENSORS_INDEX), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
