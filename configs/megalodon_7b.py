"""MEGALODON 7B: the reference repository's mega7.3B (XuezheMax/megalodon `model/mega.py`).

  python -m longjax.train --config configs/megalodon_7b.py --workdir gs://bucket/megalodon_7b

32 layers, d 4096, 4 heads, z 1024, value 8192, SwiGLU FFN 8192, N 16, 64 norm groups, chunk 2048
(the paper trains with chunk 4096 at 32K context: `--config.model.megalodon.chunk_size=4096
--config.train.seq_len=32768`). Parameter count (jax.eval_shape): see README. Training set-up of
the paper: AdamW (0.9, 0.98), eps 1e-8, weight decay 0.1, clip 1.0.
"""

import llama2_7b


def get_config(arg=None):
  del arg
  config = llama2_7b.get_config()  # vocab 32000, bf16, scanned layers, FSDP: the same trunk
  model = config.model
  model.block = "megalodon"
  model.hidden_size = 4096
  model.num_layers = 32
  model.num_heads = 4
  model.num_kv_heads = 4
  model.intermediate_size = 8192
  mega = model.megalodon
  mega.z_dim = 1024
  mega.value_dim = 8192
  mega.ema_dim = 16
  mega.chunk_size = 2048
  mega.norm_groups = 64
  mega.swiglu = True
  config.train.b2 = 0.98
  config.train.weight_decay = 0.1
  config.train.grad_clip = 1.0
  return config
