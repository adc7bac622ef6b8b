"""Training-free extension: read Llama 3.1 8B past 128K with Dynamic YaRN (no fine-tuning).

  python -m longjax.evaluate --workdir /runs/llama3_8b --config configs/extend/llama3_dynamic_yarn.py

Dynamic YaRN recomputes the YaRN factor s = max(1, n/L) from the current length n (YaRN paper
sec. 3.3), so short inputs are read exactly as pre-trained.
"""

import llama3_8b


def get_config(arg=None):
  del arg
  config = llama3_8b.get_config()
  config.model.rope.rope_type = "dynamic_yarn"
  config.model.rope.original_max_position_embeddings = 131072
  config.eval.lengths = (32768, 65536, 131072, 262144)
  config.eval.stride = 4096
  config.eval.max_document_tokens = 300000
  return config
