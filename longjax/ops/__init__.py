"""Pure array functions with no parameters: attention kernels and their dispatch, recurrences, the loss."""

from longjax.ops.attention import IMPLS, attention, choose_impl
from longjax.ops.blockwise import blockwise_attention
from longjax.ops.infini import InfiniState, infini_attention
from longjax.ops.loss import cross_entropy
from longjax.ops.reference import attention_mask, naive_attention
from longjax.ops.s2 import s2_attention

__all__ = ["IMPLS", "InfiniState", "attention", "attention_mask", "blockwise_attention", "choose_impl",
           "cross_entropy", "infini_attention", "naive_attention", "s2_attention"]
