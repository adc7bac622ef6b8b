"""The training tests' corpus, TFDS build and compilation cache (tests/train/conftest.py), shared by file locks."""

from train.conftest import runner  # noqa: F401 - a fixture
