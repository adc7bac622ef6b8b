"""Llama 2 7B (Touvron et al. 2023): 6,738,415,616 parameters, 4K context.

  python -m longjax.train --config configs/llama2_7b.py --workdir gs://bucket/llama2_7b \
      --config.train.init_from=/path/to/Llama-2-7b-hf

On a TPU pod or GPU cluster see launch/; the mesh below shards parameters over
all devices (FSDP) with bf16 compute.
"""

import base


def get_config(arg=None):
  del arg
  config = base.get_config()
  model = config.model
  model.vocab_size = 32000
  model.hidden_size = 4096
  model.intermediate_size = 11008
  model.num_layers = 32
  model.num_heads = 32
  model.num_kv_heads = 32
  model.max_position_embeddings = 4096
  model.rms_norm_eps = 1e-5
  model.dtype = "bfloat16"
  model.scan_layers = True  # one compiled block instead of 32
  model.remat_policy = "dots_with_no_batch_dims"
  model.rope.rope_theta = 10000.0

  config.data.tokenizer = "sentencepiece"
  config.data.tokenizer_path = "/path/to/Llama-2-7b-hf/tokenizer.model"
  config.train.seq_len = 4096
  config.train.global_batch_size = 64
  config.train.learning_rate = 2e-5  # YaRN/PI fine-tuning recipe
  config.train.weight_decay = 0.0
  config.train.warmup_steps = 20
  config.mesh.data = 1
  config.mesh.fsdp = -1
  return config
