"""Evaluation mains run on the training tests' shared trained workdir (built once per test run)."""

from train.conftest import runner, trained_workdir  # noqa: F401 - fixtures, shared through file locks
