"""Every relative link in README.md, benchmarks/README.md and docs/**/*.md points to a file of the repository,
and a `#fragment` into a Markdown file names one of its headings (GitHub's anchors)."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", ROOT / "benchmarks" / "README.md", *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _prose(text):
  """The lines of a Markdown page outside fenced code blocks."""
  inside = False
  for line in text.splitlines():
    if FENCE.match(line):
      inside = not inside
    elif not inside:
      yield line


def github_anchor(heading):
  """GitHub's id for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
  text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())  # a link keeps its text
  text = re.sub(r"[^\w\- ]", "", text)
  return text.replace(" ", "-")


def anchors(path):
  seen, out = {}, set()
  for line in _prose(path.read_text(encoding="utf-8")):
    m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
    if m:
      base = github_anchor(m.group(1))
      n = seen.get(base, 0)
      seen[base] = n + 1
      out.add(base if n == 0 else f"{base}-{n}")
  return out


def links(path):
  for line in _prose(path.read_text(encoding="utf-8")):
    line = re.sub(r"`[^`]*`", "", line)  # a link inside a code span is code
    for target in LINK.findall(line):
      if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
        yield target


def test_github_anchor():
  assert github_anchor("Attention types") == "attention-types"
  assert github_anchor("Training-free methods (`training_free.py`)") == "training-free-methods-training_freepy"
  assert github_anchor("`make demo`") == "make-demo"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
  broken = []
  for target in links(page):
    file, _, fragment = target.partition("#")
    dest = (page.parent / file).resolve() if file else page
    if not dest.exists():
      broken.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
    elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
      broken.append(f"{target}: no heading with anchor #{fragment} in {dest.relative_to(ROOT)}")
  assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)
