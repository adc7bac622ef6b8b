"""YaRN s=16 (Peng et al. 2023, arXiv 2309.00071): Llama 2 7B from 4K to 64K tokens.

  python -m longjax.train --config configs/extend/yarn_s16.py --workdir /runs/yarn_s16 \
      --config.train.init_from=/models/Llama-2-7b-hf
  python -m longjax.train --config configs/extend/yarn_s16.py:runlocal=true --workdir /tmp/yarn   # tiny, CPU

Recipe of the paper (sec. 4.1): lr 2e-5, no weight decay, 20 warmup steps, AdamW (0.9, 0.95),
batch 64, 400 steps at s=16 on PG-19 chunks of 64K tokens. The paper reports PPL 2.37 at 128K
(s=32, proof-pile, sliding window 256) for the s=32 model trained on top of this one.
"""

from common import extend, model_config
from longjax.config import parse_arg


def get_config(arg=None):
  args = parse_arg(arg, runlocal=False, factor=16.0)
  config = extend(model_config(args.runlocal), args.factor, args.runlocal)
  config.model.rope.rope_type = "yarn"
  config.model.rope.factor = args.factor
  config.model.rope.beta_fast = 32.0
  config.model.rope.beta_slow = 1.0
  if not args.runlocal:
    config.train.num_steps = 400
    config.train.warmup_steps = 20
    config.train.weight_decay = 0.0
    config.train.schedule = "constant"
    config.model.remat_policy = "full"  # 64K tokens a sequence: recompute the blocks in the backward pass
    config.model.attention.impl = "auto"  # cuDNN flash on GPU, splash on TPU, blockwise elsewhere
  return config
