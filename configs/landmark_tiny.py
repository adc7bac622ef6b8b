"""A tiny LLaMA with landmark attention, trained at 256 byte tokens with passkey documents mixed in.

  python -m longjax.train --config configs/landmark_tiny.py --workdir /tmp/landmark_tiny
  python -m longjax.train --config configs/landmark_tiny.py:attention=full --workdir /tmp/landmark_tiny_full
  python benchmarks/landmark_passkey.py --steps 600   # both, then passkey at 1x-8x the training length

Arguments: `attention` (landmark | full, the control: the same model and data without landmarks), `steps`.
Blocks of 31 ordinary tokens and a landmark (the paper's 63 + 1, halved so that 256 tokens hold 8 blocks, as
512 tokens hold 8 blocks in the paper); each head retrieves 4 blocks at inference, so relative distances stay
under (4 + 1) * 32 = 160 tokens, inside the trained 256, at any context length.
"""

import base
from longjax.config import parse_arg

TRAINED_LENGTH = 256  # the byte-token passkey prompt alone is ~250 tokens (see configs/demo.py)


def get_config(arg=None):
  args = parse_arg(arg, attention="landmark", steps=600)
  config = base.get_config()
  model = config.model
  model.vocab_size = 260  # 259 byte-tokenizer ids and the reserved landmark id 259
  model.hidden_size = 128
  model.intermediate_size = 352
  model.num_layers = 4
  model.num_heads = 4
  model.num_kv_heads = 2
  model.max_position_embeddings = TRAINED_LENGTH
  attention = model.attention
  attention.type = args.attention
  if args.attention == "landmark":
    attention.landmark_block = 31
    attention.landmark_topk = 4
    attention.landmark_id = 259
  data = config.data
  # As in the demo: 2-digit passkeys (5-digit ones are not learned at CPU budgets), most documents passkeys.
  data.retrieval_rate = 0.95
  data.retrieval_task = "passkey"
  data.retrieval_digits = 2
  train = config.train
  train.seq_len = TRAINED_LENGTH
  train.global_batch_size = 8
  train.num_steps = args.steps
  train.learning_rate = 3e-3
  train.warmup_steps = 30
  train.log_every = 50
  train.checkpoint_every = args.steps
  config.eval.lengths = (256, 512, 1024, 2048)
  return config
