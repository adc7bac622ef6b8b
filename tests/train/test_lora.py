"""LoRA: a fresh LoRA model is its base model; fine-tuning from a longjax workdir moves only the low-rank
factors, embeddings and norms, and merging the factors into the kernels keeps the logits."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from repo_configs import load_config
from longjax import checkpoint
from longjax.config import from_config_dict
from longjax.nn import Llama, init_params
from longjax.nn.lora import merge_lora
from longjax.train.loop import train_and_evaluate

TRAINABLE_BASE = ("embed_tokens", "lm_head", "scale")  # LongLoRA's "LoRA+": embeddings and norms train too


def _params(workdir, step=None):
  checkpointer = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    return traverse_util.flatten_dict(jax.device_get(checkpointer.restore_params(step=step)[1]), sep="/")
  finally:
    checkpointer.close()


def test_lora_trains_only_factors_embeddings_and_norms_and_merges_exactly(runner, trained_workdir, tmp_path):
  workdir = str(tmp_path / "lora")
  config = runner.config({"model.lora.rank": 4, "train.init_from": trained_workdir, "train.learning_rate": 1e-2,
                          "train.warmup_steps": 0, "train.num_steps": 3, "train.checkpoint_every": 1})
  train_and_evaluate(config, workdir)

  source, first, final = _params(trained_workdir), _params(workdir, step=1), _params(workdir, step=3)
  lora_paths = [p for p in final if p.endswith(("lora_a", "lora_b"))]
  assert len(lora_paths) == 2 * 4 * config.model.num_layers  # q, k, v, o in every layer
  assert set(final) == set(source) | set(lora_paths)
  for path in lora_paths:
    assert not np.array_equal(final[path], first[path]), path
    if path.endswith("lora_b"):  # initialised to zero; nonzero once trained
      assert np.abs(final[path]).max() > 0, path
  frozen = 0
  for path, value in source.items():
    if any(part in path.split("/") for part in TRAINABLE_BASE):
      assert not np.array_equal(final[path], value), f"{path} did not train"
    else:
      assert path.endswith("kernel"), path
      np.testing.assert_array_equal(final[path], value, err_msg=f"{path} is frozen but changed")
      frozen += 1
  assert frozen == 7 * config.model.num_layers  # q k v o gate up down

  params = traverse_util.unflatten_dict(final, sep="/")
  merged, merged_model_config = merge_lora(params, config.model)
  assert not merged_model_config.lora.enabled
  assert set(traverse_util.flatten_dict(merged, sep="/")) == set(source)
  q_path = "layers_0/attention/q_proj/kernel"
  assert not np.allclose(traverse_util.flatten_dict(merged, sep="/")[q_path], source[q_path])

  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 48)), jnp.int32)
  logits = jax.jit(Llama(config.model).apply)({"params": params}, tokens)
  merged_logits = jax.jit(Llama(merged_model_config).apply)({"params": merged}, tokens)
  np.testing.assert_allclose(merged_logits, logits, atol=1e-5, rtol=0)


def test_fresh_lora_model_gives_the_base_model_logits_exactly():
  """B starts at zero (Hu et al. 2021), so before any step the LoRA model is the base model, bit for bit."""
  config = load_config("tiny.py")
  base = from_config_dict(config).model
  config.model.lora.rank = 4
  config.model.lora.targets = ("q", "k", "v", "o", "gate", "up", "down")
  lora = from_config_dict(config).model
  params = jax.jit(lambda rng: init_params(lora, rng))(jax.random.key(0))
  flat = traverse_util.flatten_dict(params, sep="/")
  base_params = traverse_util.unflatten_dict(
      {path: value for path, value in flat.items() if not path.endswith(("lora_a", "lora_b"))}, sep="/")

  tokens = jnp.asarray(np.random.default_rng(0).integers(0, base.vocab_size, (2, 24)), jnp.int32)
  lora_logits = jax.jit(Llama(lora).apply)({"params": params}, tokens)
  base_logits = jax.jit(Llama(base).apply)({"params": base_params}, tokens)
  np.testing.assert_array_equal(lora_logits, base_logits)
  lora_b = [path for path in flat if path.endswith("lora_b")]
  assert len(lora_b) == 7 * lora.num_layers
  assert all(not np.any(flat[path]) for path in lora_b), [path for path in lora_b if np.any(flat[path])]
