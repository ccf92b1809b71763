"""The README is a front door and the docs describe the software as it is: its links resolve,
it stays short, and neither speaks of development history (the site itself is built with
`mkdocs build --strict` by `make docs`, part of `make test`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
DIARY = re.compile(
    r"\b(this|previous|last|latest|earlier|next) (stop|session)s?\b|\buntil this (stop|release)\b|"
    r"\bshipped before\b|\bbreaking change\b",
    re.I,
)


def anchors(page: Path) -> set[str]:
    """The heading anchors mkdocs (Python-Markdown's toc) makes for ``page``."""
    found = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip()
            slug = re.sub(r"[^\w\s-]", "", title.lower()).strip()
            found.add(re.sub(r"[\s]+", "-", slug))
    return found


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    text = "\n".join(lines)
    for must in ("make run", "make test", "## Cluster quick start", "Exit codes", "docs/"):
        assert must in text, must


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_development_history(page):
    assert [m.group(0) for m in DIARY.finditer(page.read_text())] == []


def test_the_checks_can_fail(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A page\n[x](missing.md) [y](#a-page) [z](#nowhere)\nSince the previous stop it is faster.\n")
    assert anchors(page) == {"a-page"}
    assert broken_links(page) == ["missing.md", "#nowhere"]
    assert DIARY.search(page.read_text())
