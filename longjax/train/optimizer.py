"""optax AdamW with warmup and decay, clipping, weight-decay masks, and what LoRA leaves trainable.

Every parameter gets one label:
  `train`  AdamW at the scheduled LR (decayed if it is a matrix: no decay on norms, biases, gates),
  `gate`   Infini-attention gates: their own LR and no decay (a plain LR leaves them near 0.5: Hugging Face,
           "A failed experiment: Infini-Attention, and why we should keep trying?", 2024,
           huggingface.co/blog/infini-attention),
  `frozen` no update and no optimizer state (LoRA fine-tuning freezes the base weights).
"""

import optax
from flax import traverse_util

from longjax.config import LoraConfig, TrainConfig

TRAIN, GATE, FROZEN = "train", "gate", "frozen"


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
  """The LR of each update, indexed by optax's count (0 for the first update).

  Linear warmup reaching cfg.learning_rate at update `warmup_steps`, then cosine/linear decay reaching
  end_learning_rate_ratio of it at the last update `num_steps`, or constant. Update k (1-based) uses
  the schedule at k, so the first update does not get LR 0 and the last one gets the end LR.
  """
  peak, end = cfg.learning_rate, cfg.learning_rate * cfg.end_learning_rate_ratio
  decay_steps = max(cfg.num_steps - cfg.warmup_steps, 1)
  if cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_learning_rate_ratio)
  elif cfg.schedule == "linear":
    decay = optax.linear_schedule(peak, end, decay_steps)
  else:
    decay = optax.constant_schedule(peak)
  warmup = optax.linear_schedule(0.0 if cfg.warmup_steps else peak, peak, max(cfg.warmup_steps, 1))
  schedule = optax.join_schedules([warmup, decay], [cfg.warmup_steps])
  return lambda count: schedule(count + 1)


def _is_lora(path: tuple[str, ...]) -> bool:
  return path[-1] in ("lora_a", "lora_b")


def _is_norm(path: tuple[str, ...]) -> bool:
  return path[-1] == "scale"


def _is_embedding(path: tuple[str, ...]) -> bool:
  return path[0] == "embed_tokens" or path[0] == "lm_head"


def parameter_labels(params, lora: LoraConfig):
  """The label tree (train | gate | frozen) of a parameter tree."""
  flat = traverse_util.flatten_dict(params)
  labels = {}
  for path in flat:
    if path[-1] == "gate":
      labels[path] = GATE
    elif not lora.enabled or _is_lora(path):
      labels[path] = TRAIN
    elif (lora.train_norms and _is_norm(path)) or (lora.train_embeddings and _is_embedding(path)):
      labels[path] = TRAIN  # LongLoRA's "LoRA+": embeddings and norms stay trainable
    else:
      labels[path] = FROZEN
  return traverse_util.unflatten_dict(labels)


def _matrix_rank(path: tuple[str, ...], value) -> int:
  """Rank of one layer's parameter: under nn.scan (`layers/...`) every leaf has a leading layer axis."""
  return value.ndim - (1 if path[0] == "layers" else 0)


def decay_mask(params):
  """Weight decay on matrices only (kernels, embeddings, LoRA factors), not norms, biases or gates,
  with or without scanned layers.

  Inside multi_transform the leaves of other labels arrive as optax.MaskedNode (no array): no decay.
  """
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict(
      {path: not isinstance(value, optax.MaskedNode) and _matrix_rank(path, value) >= 2
       for path, value in flat.items()})


def make_optimizer(cfg: TrainConfig, params, lora: LoraConfig) -> optax.GradientTransformation:
  """Clip by global norm, then AdamW per label; `params` may be abstract (only paths and ndim are read)."""
  adam = dict(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  transforms = {
      TRAIN: optax.adamw(learning_rate_schedule(cfg), weight_decay=cfg.weight_decay, mask=decay_mask, **adam),
      GATE: optax.adam(cfg.gate_learning_rate, **adam),
      FROZEN: optax.set_to_zero(),
  }
  chain = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
  return optax.chain(*chain, optax.multi_transform(transforms, parameter_labels(params, lora)))
