"""Pure array functions with no parameters: attention kernels and their dispatch, recurrences."""

from longjax.ops.attention import attention, attention_mask, naive_attention

__all__ = ["attention", "attention_mask", "naive_attention"]
