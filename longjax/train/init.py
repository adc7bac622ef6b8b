"""Where a run's first parameters come from: random, a Hugging Face directory, or another longjax workdir.

Weights are copied by path into a freshly initialised tree, so parts the source
lacks (LoRA factors, Infini-attention gates) keep their initialisation while the
new positional method and context length of the run's config take effect; rope and
tokenizer keys the run's config does not set are the source's (`run_config`).
"""

import dataclasses
import os
from typing import Iterable

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from longjax import checkpoint
from longjax.config import Config, ConfigError, DataConfig, ModelConfig, from_config_dict, merge_onto
from longjax.convert import hf
from longjax.nn import scan_params, unscan_params

# Fields that fix parameter shapes: taken from the source of `train.init_from`.
SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                "head_dim", "tie_embeddings", "rms_norm_eps")


def source_kind(init_from: str) -> str:
  """'hf' for a transformers directory, 'longjax' for a workdir with checkpoints."""
  if os.path.isfile(os.path.join(init_from, "config.json")) and (
      os.path.isfile(os.path.join(init_from, hf.SAFETENSORS)) or
      os.path.isfile(os.path.join(init_from, hf.SAFETENSORS_INDEX))):
    return "hf"
  if os.path.isdir(os.path.join(init_from, checkpoint.CHECKPOINTS)):
    return "longjax"
  raise ConfigError(f"train.init_from={init_from!r} is invalid: expected a transformers LLaMA directory "
                    "(config.json + safetensors) or a longjax workdir (with checkpoints/)")


# What a run takes from `train.init_from` where its own config does not set it (config.merge_onto).
SOURCE_KEYS = ("model.rope", "data.tokenizer", "data.tokenizer_path", "data.add_bos")


def source_config(init_from: str) -> tuple[ModelConfig, DataConfig]:
  """The model config and tokenizer of `train.init_from`, read without its parameters."""
  if source_kind(init_from) == "hf":
    return hf.load_config(init_from), hf.tokenizer_data(init_from)
  config = checkpoint.read_config(init_from)
  return config.model, config.data


def run_config(given: ml_collections.ConfigDict, explicit: Iterable[str] = ()) -> Config:
  """The validated run config of `given`; with train.init_from, each of SOURCE_KEYS that `given` does not set
  (`config.merge_onto`; `explicit`: the --config.KEY flags) is the source's: a fine-tune of an imported model
  keeps its rope_theta and its tokenizer, and a rope method that needs L gets its max_position_embeddings."""
  init_from = given.train.init_from
  if not init_from:
    return from_config_dict(given)
  model, data = source_config(init_from)
  base = given.to_dict()
  base["model"]["rope"] = dataclasses.asdict(model.rope)
  base["data"].update(tokenizer=data.tokenizer, tokenizer_path=data.tokenizer_path, add_bos=data.add_bos)
  return merge_onto(base, given, SOURCE_KEYS, explicit=explicit, trained_length=model.max_position_embeddings)


def load_source(init_from: str) -> tuple[ModelConfig, dict]:
  """(model config of the source, its parameters as an unscanned numpy tree)."""
  if source_kind(init_from) == "hf":
    return hf.load(init_from)
  source_config = checkpoint.read_config(init_from)
  checkpointer = checkpoint.Checkpointer(init_from, read_only=True)
  try:
    _, params = checkpointer.restore_params()
  finally:
    checkpointer.close()
  params = jax.tree.map(np.asarray, params)
  if "layers" in params:
    params = unscan_params(params, source_config.model.num_layers)
  return source_config.model, params


def adopt_shapes(model: ModelConfig, source: ModelConfig) -> ModelConfig:
  """The run's model config with the source's shape-defining fields (rope, attention, LoRA stay the run's); a
  larger vocab_size of the run is kept (new token rows, e.g. a landmark token, see `merge_into`)."""
  shapes = {name: getattr(source, name) for name in SHAPE_FIELDS}
  shapes["vocab_size"] = max(model.vocab_size, source.vocab_size)
  return dataclasses.replace(model, **shapes)


# (path, vocabulary axis) of the parameters that grow when a run adds tokens to its source's vocabulary.
_VOCAB_AXES = {("embed_tokens", "embedding"): 0, ("lm_head",): 1}


def _grow_vocab(path: tuple, value, like_shape: tuple):
  """The source embedding with new token rows set to the mean of its rows (the reference of landmark attention,
  `smart_tokenizer_and_embedding_resize`), when only the vocabulary axis differs and grows; else None."""
  axis = _VOCAB_AXES.get(tuple(path))
  if axis is None or value.ndim != len(like_shape) or value.shape[axis] > like_shape[axis] or any(
      a != b for i, (a, b) in enumerate(zip(value.shape, like_shape)) if i != axis):
    return None
  value = np.asarray(value)
  extra = np.repeat(value.mean(axis=axis, keepdims=True), like_shape[axis] - value.shape[axis], axis=axis)
  return np.concatenate([value, extra.astype(value.dtype)], axis=axis)


def merge_into(fresh: dict, source: dict, scan_layers: bool, num_layers: int, place=None) -> dict:
  """`fresh` with every leaf that `source` (unscanned) has at the same path replaced by the source's value.

  `place(value, like)` puts a source value where the fresh leaf `like` lives (default: a numpy array of its
  dtype); the training loop places each one on the devices of the fresh leaf's sharding, so the fresh
  tree never makes a round trip through host memory.
  """
  place = place or (lambda value, like: np.asarray(value, like.dtype))
  if scan_layers:
    source = scan_params(source, num_layers)
  flat_source = traverse_util.flatten_dict(source)
  flat = traverse_util.flatten_dict(fresh)
  for path, value in flat_source.items():
    if path not in flat:
      raise ConfigError(f"train.init_from: parameter {'/'.join(path)} has no place in this model")
    if tuple(value.shape) != tuple(flat[path].shape):
      grown = _grow_vocab(path, value, tuple(flat[path].shape))
      if grown is not None:
        flat[path] = place(grown, flat[path])
        continue
      raise ConfigError(f"train.init_from: parameter {'/'.join(path)} has shape {tuple(value.shape)}; "
                        f"this model expects {tuple(flat[path].shape)}")
    flat[path] = place(value, flat[path])
  return traverse_util.unflatten_dict(flat)
