"""Tokenizers, document sources (the text-file TFDS builder, named TFDS datasets), packed and shuffled batches,
and synthetic retrieval documents."""

from longjax.data.global_batches import GlobalBatches, make_batches
from longjax.data.packing import PackedBatches, insert_landmarks
from longjax.data.sources import Documents, open_documents
from longjax.data.synthetic import kv_recall_document, passkey_document, retrieval_generator
from longjax.data.textdir import TextDir, TextDirConfig, build_text_dir
from longjax.data.tokenizer import (ByteTokenizer, HuggingFaceTokenizer, SentencePieceTokenizer, Tokenizer,
                                    get_tokenizer)

__all__ = [
    "ByteTokenizer",
    "Documents",
    "GlobalBatches",
    "HuggingFaceTokenizer",
    "PackedBatches",
    "SentencePieceTokenizer",
    "TextDir",
    "TextDirConfig",
    "Tokenizer",
    "build_text_dir",
    "get_tokenizer",
    "insert_landmarks",
    "kv_recall_document",
    "make_batches",
    "open_documents",
    "passkey_document",
    "retrieval_generator",
]
