"""LongLoRA (Chen et al. 2024, arXiv 2309.12307): Llama 2 7B to 32K with S2-Attn, LoRA and linear PI.

  python -m longjax.train --config configs/extend/longlora_pi.py --workdir /runs/longlora \
      --config.train.init_from=/models/Llama-2-7b-hf
  python -m longjax.train --config configs/extend/longlora_pi.py:runlocal=true --workdir /tmp/longlora  # tiny

Recipe of the paper (sec. 4.1, dvlab-research/LongLoRA fine-tune.py): S2-Attn with group size
1/4 of the sequence in training and full attention at inference; LoRA r=8, alpha=16 on q, k, v, o
with embeddings and norms trainable ("LoRA+"); position interpolation; AdamW lr 2e-5, no weight
decay, 20 warmup steps, batch 64, 1000 steps. Export with longjax.nn.lora.merge_lora.
"""

from common import extend, model_config
from longjax.config import parse_arg


def get_config(arg=None):
  args = parse_arg(arg, runlocal=False, factor=8.0)
  config = extend(model_config(args.runlocal), args.factor, args.runlocal)
  config.model.rope.rope_type = "linear"
  config.model.rope.factor = args.factor
  config.model.attention.type = "s2"
  config.model.attention.s2.group_size_ratio = 0.25
  config.model.lora.rank = 8
  config.model.lora.alpha = 16.0
  config.model.lora.targets = ("q", "k", "v", "o")
  config.model.lora.train_embeddings = True
  config.model.lora.train_norms = True
  if not args.runlocal:
    config.train.num_steps = 1000
    config.train.warmup_steps = 20
    config.train.weight_decay = 0.0
    config.train.schedule = "constant"
  return config
