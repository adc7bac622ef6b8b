"""The `make demo` job: a small LLaMA pre-trained at 128 tokens on the standard library's source, then extended.

  python -m longjax.demo --workdir demo_out                      # everything, with a report
  python -m longjax.train --config configs/demo.py --workdir demo_out/base             # stage by stage
  python -m longjax.train --config configs/demo.py:stage=yarn --workdir demo_out/yarn \
      --config.train.init_from=demo_out/base

Stages: `base` (default RoPE, 128 tokens), then fine-tuning at 512 tokens (4x) with
`yarn` (s=4), `linear` (Position Interpolation, s=4) or `default` (plain RoPE, the control).
"""

import base
from longjax.config import parse_arg

PRETRAIN_LENGTH = 128
EXTENSION = 4


def get_config(arg=None):
  args = parse_arg(arg, stage="base", steps=0)
  config = base.get_config()
  model = config.model
  model.hidden_size = 128
  model.intermediate_size = 352
  model.num_layers = 4
  model.num_heads = 4
  model.num_kv_heads = 2
  model.max_position_embeddings = PRETRAIN_LENGTH
  train = config.train
  train.seq_len = PRETRAIN_LENGTH
  train.global_batch_size = 16
  train.num_steps = args.steps or 600
  train.learning_rate = 3e-3
  train.warmup_steps = 30
  train.log_every = 20
  train.checkpoint_every = 200
  config.eval.lengths = (64, 128, 256, 512, 1024)
  config.eval.stride = 128
  config.eval.max_documents = 8
  config.eval.max_document_tokens = 4096
  if args.stage != "base":  # fine-tune at 4x the pre-training length (YaRN paper recipe, shrunk)
    model.max_position_embeddings = EXTENSION * PRETRAIN_LENGTH
    model.rope.rope_type = args.stage
    if args.stage != "default":
      model.rope.factor = float(EXTENSION)
      model.rope.original_max_position_embeddings = PRETRAIN_LENGTH
    train.seq_len = EXTENSION * PRETRAIN_LENGTH
    train.global_batch_size = 4  # same tokens per step as pre-training
    train.num_steps = args.steps or 100
    train.learning_rate = 1e-3
    train.warmup_steps = 10
    train.weight_decay = 0.0
    train.log_every = 10
    train.checkpoint_every = 100
  return config
