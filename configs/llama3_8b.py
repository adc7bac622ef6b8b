"""Llama 3.1 8B (Grattafiori et al. 2024): 8,030,261,248 parameters, 128K context via Llama 3 rope scaling.

  python -m longjax.train --config configs/llama3_8b.py --workdir gs://bucket/llama3_8b \
      --config.train.init_from=/path/to/Meta-Llama-3.1-8B
"""

import llama2_7b


def get_config(arg=None):
  del arg
  config = llama2_7b.get_config()  # same width, depth and training set-up; differences below
  model = config.model
  model.vocab_size = 128256
  model.intermediate_size = 14336
  model.num_kv_heads = 8  # grouped-query attention
  model.max_position_embeddings = 131072
  model.rms_norm_eps = 1e-5
  model.rope.rope_type = "llama3"
  model.rope.rope_theta = 500000.0
  model.rope.factor = 8.0
  model.rope.low_freq_factor = 1.0
  model.rope.high_freq_factor = 4.0
  model.rope.original_max_position_embeddings = 8192
  # Llama 3 ships a tiktoken-style BPE as tokenizer.json, not a SentencePiece model; bos/eos
  # (<|begin_of_text|>, <|end_of_text|>) come from the tokenizer_config.json beside it.
  config.data.tokenizer = "hf"
  config.data.tokenizer_path = "/path/to/Meta-Llama-3.1-8B"
  config.train.seq_len = 8192
  return config
