"""Converted weights as a plain Orbax checkpoint: `params/` (PyTreeCheckpointer) and `model_config.json`."""

import dataclasses
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from longjax.config import ModelConfig, model_config_from_dict
from longjax.convert.hf import ConversionError

MODEL_CONFIG = "model_config.json"


def save_params(model: ModelConfig, params: dict, path: str) -> None:
  """Write params with Orbax and the model config beside them (an existing directory is refused)."""
  path = os.path.abspath(path)
  if os.path.exists(os.path.join(path, "params")):
    raise ConversionError(f"{path}: already holds a checkpoint; allowed: a new directory")
  os.makedirs(path, exist_ok=True)
  ocp.PyTreeCheckpointer().save(os.path.join(path, "params"), jax.tree.map(np.asarray, params))
  with open(os.path.join(path, MODEL_CONFIG), "w") as f:
    json.dump(dataclasses.asdict(model), f, indent=2, sort_keys=True)


def load_params(path: str) -> tuple[ModelConfig, dict]:
  path = os.path.abspath(path)
  config_file = os.path.join(path, MODEL_CONFIG)
  if not os.path.isfile(config_file):
    raise ConversionError(f"{config_file}: file not found; allowed: a directory written by longjax.convert")
  with open(config_file) as f:
    model = model_config_from_dict(json.load(f))
  return model, ocp.PyTreeCheckpointer().restore(os.path.join(path, "params"))

