"""LoRA export: fold every low-rank update into its kernel, W' = W + scale * A B."""

import dataclasses

import jax
import jax.numpy as jnp

from longjax.config import LoraConfig, ModelConfig


def _merge_dense(module: dict, scale: float, stacked: bool) -> dict:
  a, b = module["lora_a"], module["lora_b"]

  def delta(a, b):
    return jnp.tensordot(a, b, axes=1)  # [*in, r] x [r, *out] -> [*in, *out]

  update = jax.vmap(delta)(a, b) if stacked else delta(a, b)
  merged = {k: v for k, v in module.items() if k not in ("lora_a", "lora_b")}
  merged["kernel"] = (module["kernel"] + scale * update).astype(module["kernel"].dtype)
  return merged


def merge_lora(params: dict, config: ModelConfig) -> tuple[dict, ModelConfig]:
  """(params with LoRA folded in and lora_a/lora_b removed, the same config with LoRA off).

  The merged model gives the same logits as the unmerged one (up to float rounding).
  """
  if not config.lora.enabled:
    return params, config
  scale = config.lora.scale

  def walk(tree, stacked):
    if isinstance(tree, dict) and "lora_a" in tree:
      return _merge_dense(tree, scale, stacked)
    if isinstance(tree, dict):
      return {k: walk(v, stacked or k == "layers") for k, v in tree.items()}
    return tree

  merged_config = dataclasses.replace(config, lora=LoraConfig(rank=0, alpha=config.lora.alpha,
                                                              targets=config.lora.targets))
  return walk(params, False), merged_config
