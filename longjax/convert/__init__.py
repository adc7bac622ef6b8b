"""Hugging Face LLaMA <-> longjax parameters."""
