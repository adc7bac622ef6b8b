"""Inference: caches, prefill, sampling and generation; `longjax.load(workdir)` for notebooks."""

from longjax.inference.generate import generate, pad_prompts, prefill, sample_logits
from longjax.nn import cache_lengths, init_cache

__all__ = ["cache_lengths", "generate", "init_cache", "pad_prompts", "prefill", "sample_logits"]
