"""A small text directory, built once a session as a TextDir dataset."""

import pytest

from longjax.config import DataConfig

# Relative path -> bytes. Readable documents, plus files the builder must skip or not match.
READABLE = {f"pkg/module_{i}.py": f"# module {i}\n".encode() + b"x = 1\n" * (i + 1) for i in range(12)}
READABLE |= {
    "top.py": "def héllo():\n    return '世界 🙂'\n".encode(),
    "pkg/deep/nested.py": b"\n".join(b"line %d" % i for i in range(500)),
}
SKIPPED = {
    "empty.py": b"",
    "blank.py": b"  \n\t\n",
    "binary.py": b"\x00\x01\x02 not text",
    "latin1.py": "caf\xe9".encode("latin-1"),
    "notes.txt": b"does not match the glob",
}


def write_corpus(root, files):
  for relative_path, data in files.items():
    path = root / relative_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
  return root


@pytest.fixture(name="write_corpus", scope="session")
def write_corpus_fixture():
  """`write_corpus(root, {relative path: bytes}) -> root`, for tests that need their own directory."""
  return write_corpus


@pytest.fixture(scope="session")
def readable_files():
  """The corpus files that must become documents: {relative path: bytes}."""
  return READABLE


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
  return write_corpus(tmp_path_factory.mktemp("corpus"), READABLE | SKIPPED)


@pytest.fixture(scope="session")
def corpus_config(corpus_dir, tmp_path_factory):
  """DataConfig of the corpus; the first test that opens it builds it into this session's data_dir."""
  return DataConfig(text_dir=str(corpus_dir), validation_fraction=0.3,
                    data_dir=str(tmp_path_factory.mktemp("tensorflow_datasets")))
