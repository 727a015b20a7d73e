"""The documentation holds together: the README stays a front page, every page under docs/ is reachable
from it, and no relative link (file or ``#anchor``) in README.md or docs/*.md points at nothing.

Anchors are computed as GitHub renders them (lowercase; punctuation other than ``-`` and ``_`` dropped;
spaces to ``-``; a repeated heading gets ``-1``, ``-2``, ...), so a link that passes here works on GitHub.
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_README_LINES = 400

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"`+[^`]*`+")
LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")


def pages() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, where headings and links mean something."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (github-slugger on the rendered text)."""
    text = LINK.sub(lambda m: m.group(1), heading)
    text = INLINE_CODE.sub(lambda m: m.group(0).strip("`"), text)
    text = re.sub(r"<[^>]+>", "", text).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    """Every link target written in the page's prose (inline and reference-style), code left out."""
    out = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        bare = INLINE_CODE.sub("", line)
        out += [m.group(2) for m in LINK.finditer(bare)]
        ref = REFERENCE.match(bare)
        if ref:
            out.append(ref.group(1))
    return out


def is_relative(target: str) -> bool:
    parts = urlsplit(target)
    return not parts.scheme and not parts.netloc


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    problems = []
    for target in filter(is_relative, links(path)):
        parts = urlsplit(target)
        dest = (path.parent / unquote(parts.path)).resolve() if parts.path else path
        if not dest.exists():
            problems.append(f"{path.relative_to(root)}: {target} (no file {dest})")
        elif parts.fragment and dest.suffix == ".md" and parts.fragment not in anchors(dest):
            problems.append(f"{path.relative_to(root)}: {target} (no heading with anchor #{parts.fragment})")
    return problems


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_at_a_file_and_heading_that_exist(page):
    assert broken_links(page) == []


def test_the_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move reference text into docs/"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / unquote(urlsplit(t).path)).resolve() for t in links(README) if is_relative(t)}
    docs = sorted((REPO / "docs").glob("*.md"))
    assert docs, "docs/ holds no pages"
    assert [str(p.relative_to(REPO)) for p in docs if p.resolve() not in linked] == []


def test_the_link_checker_finds_what_is_broken(tmp_path):
    """The checker itself: a missing file, a missing anchor and GitHub's slugs of awkward headings."""
    (tmp_path / "other.md").write_text("# `psegzoo cache`, `psegzoo cache rm` & more\n\n## Set-up\n\n## Set-up\n")
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\n# not a heading [x](nowhere.md)\n```\n"
        "[a](other.md#psegzoo-cache-psegzoo-cache-rm--more) [b](other.md#set-up-1) [c](https://example.org/x)\n"
        "[d](missing.md) [e](other.md#nope) `[f](in-code.md)` [g](#local)\n\n## Local\n"
    )
    found = [p.split(" (")[0] for p in broken_links(page, root=tmp_path)]
    assert found == ["page.md: missing.md", "page.md: other.md#nope"]
