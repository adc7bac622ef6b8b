"""Landmark attention (Mohtashami & Jaggi 2023, arXiv 2305.16300): fine-tune Llama 2 7B with landmark tokens.

  python -m longjax.train --config configs/extend/landmark.py --workdir /runs/landmark \
      --config.train.init_from=/models/Llama-2-7b-hf
  python -m longjax.train --config configs/extend/landmark.py:seq_len=2048 --workdir /runs/landmark_2k \
      --config.train.init_from=/models/Llama-2-7b-hf
  python -m longjax.train --config configs/extend/landmark.py:runlocal=true --workdir /tmp/landmark  # tiny

Recipe of the paper (sec. 4.2; epfml/landmark-attention llama/train.py and its README command): LLaMA 7B
fine-tuned on RedPajama at 512 tokens (`seq_len`, 512-2048 here) with a landmark after every 63 tokens, the
landmark a new token (id 32000: the vocabulary grows by one row, initialised to the mean embedding, as the
reference's smart_tokenizer_and_embedding_resize does), AdamW lr 2e-5, weight decay 0.1, 3% warmup, cosine,
batch 8 GPUs x 2 x 8 accumulation = 128, 15,000 steps; no change to RoPE (retrieval keeps relative distances
under (k + 1) * 64 at inference). At inference each head retrieves `landmark_topk` = 4 blocks.
"""

from common import model_config
from longjax.config import parse_arg


def get_config(arg=None):
  args = parse_arg(arg, runlocal=False, seq_len=512)
  config = model_config(args.runlocal)
  attention = config.model.attention
  attention.type = "landmark"
  attention.landmark.topk = 4
  if args.runlocal:  # the tiny model with the byte tokenizer: 259 ids, the landmark 259
    config.model.vocab_size = 260
    attention.landmark.id = 259
    attention.landmark.block = 15
    return config
  config.model.vocab_size = 32001
  attention.landmark.id = 32000
  attention.landmark.block = 63
  config.train.seq_len = args.seq_len
  config.train.global_batch_size = 128
  config.train.num_steps = 15000
  config.train.learning_rate = 2e-5
  config.train.weight_decay = 0.1
  config.train.warmup_steps = 450  # 3% of 15,000
  config.train.schedule = "cosine"
  return config
