"""Pure train and eval steps: (state, batch) -> (state, metrics). No I/O, jit-able, shardable.

A batch is a dict of int32[B, T] `inputs`, `targets`, `positions`, `segment_ids`
and float32[B, T] `loss_mask` (see longjax.data). The loss is token-weighted
cross-entropy in float32.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from longjax import sharding
from longjax.config import ModelConfig
from longjax.nn import lm_head_kernel
from longjax.ops import chunked_cross_entropy, context_parallel, cross_entropy
from longjax.train.optimizer import FROZEN

TrainState = dict[str, Any]  # {"step": int32[], "params": tree, "opt_state": tree}


def model_inputs(model_config: ModelConfig, batch: dict, balanced: bool = False) -> dict:
  """Keyword arguments of Llama.__call__ for a packed batch; `balanced`: the batch is in context parallelism's
  balanced layout (`balance_batch`).

  With `attention.cross_documents` the packed row is one long sequence (positions
  0..T-1); otherwise documents are masked from each other and positions restart.
  PoSE batches (data.pose_target_length) carry `pose_positions`, the row's skipped position ids, used instead.
  """
  layout = {"balanced": True} if balanced else {}
  pose = {"positions": batch["pose_positions"]} if "pose_positions" in batch else {}
  if model_config.attention.cross_documents:
    if pose:
      return {**pose, **layout}
    # A load-balanced row is permuted (`balance_batch`): then its positions must be given.
    return {"positions": batch["positions"], **layout} if balanced else {}
  return {"positions": batch["positions"], "segment_ids": batch["segment_ids"], **pose, **layout}


def balanced_shards(model_config: ModelConfig) -> int:
  """How many sequence shards the batch is load-balanced over (0: it is not), under the current mesh."""
  attention = model_config.attention
  axis = None if attention.context_parallel == "none" or not attention.load_balance else sharding.sequence_axis()
  return 0 if axis is None else jax.sharding.get_abstract_mesh().shape[axis]


def balance_batch(model_config: ModelConfig, batch: dict, shards: int) -> dict:
  """Every [B, T] array of the batch permuted once into the balanced layout of ops.context_parallel, with
  explicit positions (0..T-1 for cross-document rows); the loss, a token sum, needs no permuting back."""
  if model_config.attention.cross_documents:
    batch = {**batch, "positions": jnp.broadcast_to(jnp.arange(batch["inputs"].shape[1], dtype=jnp.int32),
                                                    batch["inputs"].shape)}
  return {name: context_parallel.load_balance(value, shards) for name, value in batch.items()}


def _in_layout(model_config: ModelConfig, step_fn):
  """step_fn(first, batch, balanced) run on the batch in the layout context parallelism wants (see
  `balance_batch`), `balanced` saying which."""

  def step(first, batch):
    shards = balanced_shards(model_config)
    if not shards:
      return step_fn(first, batch, False)
    return step_fn(first, balance_batch(model_config, batch, shards), True)

  return step


def loss_fn(params, model: nn.Module, batch: dict, train: bool, balanced: bool = False):
  """(mean token loss, (loss sum, token count)); with `model.loss_chunk` the LM head is fused into a chunked
  loss, so that [B, T, vocab] logits never exist at once. `balanced`: the batch is in the balanced layout."""
  config = model.config
  apply = lambda **kwargs: model.apply({"params": params}, batch["inputs"], train=train,  # noqa: E731
                                       **model_inputs(config, batch, balanced), **kwargs)
  if config.loss_chunk:
    hidden = apply(hidden_only=True)
    total, count = chunked_cross_entropy(hidden, lm_head_kernel(config, params), batch["targets"],
                                         batch["loss_mask"], chunk=config.loss_chunk)
  else:
    total, count = cross_entropy(apply(), batch["targets"], batch["loss_mask"])
  return total / jnp.maximum(count, 1.0), (total, count)


def _split_trainable(params, labels):
  """The trainable subset: frozen leaves become None (empty subtrees), so jax.grad skips them."""
  return jax.tree.map(lambda p, label: None if label == FROZEN else p, params, labels)


def _fill(trainable, params, labels):
  """A full tree from the trainable subset, frozen leaves taken from params."""
  flat_params, treedef = jax.tree.flatten(params)
  flat_labels = treedef.flatten_up_to(labels)
  leaves = iter(jax.tree.leaves(trainable))
  return treedef.unflatten([p if label == FROZEN else next(leaves) for p, label in zip(flat_params, flat_labels)])


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, labels, grad_accum_steps: int = 1):
  """The step function. Gradients are taken only w.r.t. trainable leaves, so frozen (LoRA base) weights
  cost no weight-gradient matmuls; micro-batches are scanned and their gradients summed token-weighted."""

  def micro_grads(params, batch, balanced):
    trainable = _split_trainable(params, labels)

    def loss_of_trainable(t):
      _, (total, count) = loss_fn(_fill(t, params, labels), model, batch, True, balanced)
      return total, count

    (total, count), grads = jax.value_and_grad(loss_of_trainable, has_aux=True)(trainable)
    return total, count, _fill(grads, jax.tree.map(jnp.zeros_like, params), labels)

  def step(state: TrainState, batch: dict, balanced: bool):
    params = state["params"]
    if grad_accum_steps == 1:
      total, count, grads = micro_grads(params, batch, balanced)
    else:
      micro = jax.tree.map(lambda x: x.reshape((grad_accum_steps, -1) + x.shape[1:]), batch)

      def body(carry, mb):
        total, count, grads = micro_grads(params, mb, balanced)
        return jax.tree.map(jnp.add, carry, (total, count, grads)), None

      zeros = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
      (total, count, grads), _ = jax.lax.scan(body, zeros, micro)
    count = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / count, grads)
    updates, opt_state = optimizer.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    metrics = {"loss": total / count, "grad_norm": optax.tree.norm(grads), "tokens": count}
    return {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state}, metrics

  return _in_layout(model.config, step)


def make_eval_step(model: nn.Module):
  def step(params, batch, balanced):
    _, (total, count) = loss_fn(params, model, batch, False, balanced)
    return {"loss_sum": total, "tokens": count}

  return _in_layout(model.config, step)
