"""pytest imports test files by basename (tests/ has no packages): two files of one name in different folders make
one of them fail to collect ("import file mismatch") when both run in one session, as in `make test`."""

import collections
import pathlib

TESTS = pathlib.Path(__file__).resolve().parent


def test_test_file_basenames_are_unique():
  names = collections.defaultdict(list)
  for path in TESTS.rglob("test_*.py"):
    names[path.name].append(str(path.relative_to(TESTS)))
  assert not {name: paths for name, paths in names.items() if len(paths) > 1}
