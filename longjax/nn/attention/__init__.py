"""Attention: the module (`Attention`), the registry of types (`ATTENTION_TYPES`), one module a type."""

from longjax.nn.attention.common import AttentionInputs, AttentionType, InsertedTokens
from longjax.nn.attention.layer import Attention
from longjax.nn.attention.registry import ATTENTION_TYPES, attention_type, inserted_tokens

__all__ = ["ATTENTION_TYPES", "Attention", "AttentionInputs", "AttentionType", "InsertedTokens", "attention_type",
           "inserted_tokens"]
