"""A RoPE ablation on the tiny model: each method trained at 128 tokens, compared at 1x and 4x that length.

  python launch/sweep.py --config configs/sweep_rope.py --workdir /tmp/sweep_rope
  python launch/sweep.py --collect /tmp/sweep_rope
  python -m longjax.train --config configs/sweep_rope.py --workdir /tmp/rope_yarn --config.model.rope.rope_type=yarn

`get_sweep` adds one run per (rope_type, learning rate); every run evaluates at its last step, so the
collected table has each run's final loss, eval loss and perplexity at 128 and 512 tokens.
"""

import tiny


def get_config(arg=None):
  config = tiny.get_config(arg)
  rope = config.model.rope
  # Every method's parameters are set, so that a run picks one by rope_type alone (default ignores them).
  rope.original_max_position_embeddings = 128
  rope.factor = 4.0
  rope.alpha = 4.0  # ntk
  config.train.eval_every = config.train.num_steps  # once, at the end
  config.eval.tasks = ("perplexity",)
  config.eval.task_lengths = (128, 512)
  return config


def get_sweep(add):
  for rope_type in ("default", "linear", "ntk", "yarn"):
    for learning_rate in (1e-3, 3e-3):
      add(**{"model.rope.rope_type": rope_type, "train.learning_rate": learning_rate})
