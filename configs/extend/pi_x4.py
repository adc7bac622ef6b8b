"""Position Interpolation (Chen et al. 2023, arXiv 2306.15595): Llama 2 7B from 4K to 16K tokens.

  python -m longjax.train --config configs/extend/pi_x4.py --workdir /runs/pi_x4 \
      --config.train.init_from=/models/Llama-2-7b-hf
  python -m longjax.train --config configs/extend/pi_x4.py:runlocal=true --workdir /tmp/pi_x4   # tiny, CPU

Recipe of the paper (sec. 3.1): AdamW (0.9, 0.95), lr 2e-5, no weight decay, 20 warmup steps,
batch 64, 1000 steps.
"""

from common import extend, model_config
from longjax.config import parse_arg


def get_config(arg=None):
  args = parse_arg(arg, runlocal=False)
  config = extend(model_config(args.runlocal), 4.0, args.runlocal)
  config.model.rope.rope_type = "linear"
  config.model.rope.factor = 4.0
  if not args.runlocal:
    config.train.num_steps = 1000
    config.train.schedule = "constant"
    config.train.weight_decay = 0.0
  return config
