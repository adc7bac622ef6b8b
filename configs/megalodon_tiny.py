"""A tiny MEGALODON (Ma et al. 2024) on the default corpus: chunked attention plus a complex EMA across chunks.

  python -m longjax.train --config configs/megalodon_tiny.py --workdir /tmp/megalodon_tiny
  python -m longjax.generate --workdir /tmp/megalodon_tiny --prompt "def main(" --max_new_tokens 64

Same data, training, checkpoints and inference as configs/tiny.py; only the block differs. Chunks of 32
tokens in 128-token rows, so every row crosses chunk boundaries that only CEMA and the norm statistics
bridge. Arguments: `steps`, `chunk`.
"""

import tiny
from longjax.config import parse_arg


def get_config(arg=None):
  args = parse_arg(arg, steps=60, chunk=32)
  config = tiny.get_config(f"steps={args.steps}")
  model = config.model
  model.block = "megalodon"
  model.num_heads = 2  # MEGALODON uses few wide heads (mega7.3B: 4)
  model.num_kv_heads = 2
  model.intermediate_size = 128
  mega = model.megalodon
  mega.z_dim = 32
  mega.value_dim = 128
  mega.ema_dim = 16
  mega.chunk_size = args.chunk
  mega.norm_groups = 8
  mega.swiglu = True
  config.train.learning_rate = 3e-3
  return config
