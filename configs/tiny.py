"""A tiny LLaMA that trains on 2 CPU cores in well under a second a step.

  python -m longjax.train --config configs/tiny.py --workdir /tmp/longjax_tiny
  python -m longjax.train --config configs/tiny.py:rope=yarn --workdir /tmp/longjax_tiny_yarn

Arguments: `rope` (any rope_type; extension methods get factor 4 over the 128-token
pre-training length), `attention` (full | s2 | sliding | infini), `steps`.
"""

import base
from longjax.config import parse_arg


def get_config(arg=None):
  args = parse_arg(arg, rope="default", attention="full", steps=60)
  config = base.get_config()
  model = config.model
  model.hidden_size = 64
  model.intermediate_size = 176
  model.num_layers = 2
  model.num_heads = 4
  model.num_kv_heads = 2  # grouped-query, as Llama 2 70B / Llama 3
  model.max_position_embeddings = 128
  model.rope.rope_type = args.rope
  if args.rope != "default":  # a context-extension method: 4x the 128-token pre-training length
    model.rope.original_max_position_embeddings = 128
    model.rope.factor = 4.0
    if args.rope == "ntk":
      model.rope.alpha = 4.0
    if args.rope == "longrope":
      model.rope.short_factor = (1.0,) * 8
      model.rope.long_factor = tuple(1.0 + 3.0 * i / 7 for i in range(8))
  model.attention.type = args.attention
  if args.attention == "sliding":
    model.attention.sliding.window = 64
    model.attention.sliding.sinks = 4
  if args.attention == "infini":
    model.attention.infini.segment_len = 64

  config.train.seq_len = 128
  config.train.global_batch_size = 8
  config.train.num_steps = args.steps
  config.train.learning_rate = 3e-3
  config.train.warmup_steps = 5
  config.train.log_every = 5
  config.train.checkpoint_every = 20
  config.eval.lengths = (64, 128, 256, 512)
  config.eval.stride = 64
  return config
