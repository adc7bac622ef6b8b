"""Inference: generation and notebook loading (KV caches come with the inference issue)."""
