"""A tiny LLaMA with landmark attention, trained at 256 byte tokens with passkey documents mixed in.

  python -m longjax.train --config configs/landmark_tiny.py --workdir /tmp/landmark_tiny
  python -m longjax.train --config configs/landmark_tiny.py:attention=full --workdir /tmp/landmark_tiny_full
  python benchmarks/landmark_passkey.py --steps 600   # both, then passkey at 1x-8x the training length

Arguments: `attention` (landmark | full, the control: the same model and data without landmarks), `steps`.
Blocks of 31 ordinary tokens and a landmark (the paper's 63 + 1, halved so that 256 tokens hold 8 blocks, as
512 tokens hold 8 blocks in the paper); each head retrieves 4 blocks at inference, so relative distances stay
under (4 + 1) * 32 = 160 tokens, inside the trained 256, at any context length.
"""

import demo
from longjax.config import parse_arg

TRAINED_LENGTH = demo.PRETRAIN_LENGTH  # the byte-token passkey prompt alone is ~250 tokens (see configs/demo.py)


def get_config(arg=None):
  # The demo's pre-training model and passkey data mix, so the two runs compare with the demo's base model.
  args = parse_arg(arg, attention="landmark", steps=600)
  config = demo.get_config(f"steps={args.steps}")
  model = config.model
  model.vocab_size = 260  # 259 byte-tokenizer ids and the reserved landmark id 259
  attention = model.attention
  attention.type = args.attention
  if args.attention == "landmark":
    attention.landmark.block = 31
    attention.landmark.topk = 4
    attention.landmark.id = 259
  config.train.checkpoint_every = args.steps
  config.eval.lengths = (256, 512, 1024, 2048)
  return config
