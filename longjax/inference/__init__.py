"""Inference: caches, prefill, sampling and generation; `longjax.load(workdir)` for notebooks."""

from longjax.inference.generate import generate, pad_prompts, prefill, sample_logits
from longjax.inference.score import eval_chunk, token_nll
from longjax.nn import cache_lengths, init_cache

__all__ = ["cache_lengths", "eval_chunk", "generate", "init_cache", "pad_prompts", "prefill", "sample_logits",
           "token_nll"]
