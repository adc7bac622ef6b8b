"""Conversion tests train tiny runs too: they share the training tests' corpus, runner and compilation cache."""

from train.conftest import runner  # noqa: F401 - a fixture, shared through tests/train/conftest.py's file locks
