"""The README is a landing page, docs/README.md indexes every docs page, and every relative Markdown link in them
and in docs/ points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.conftest import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
INDEX = REPO_ROOT / "docs" / "README.md"
#: The four groups of docs/, each a folder.
GROUPS = ("use", "build", "evidence", "develop")
# [text](target) or ![alt](target); the target ends at the first space (an optional "title" follows) or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def relative_links(page: Path) -> list[str]:
    """Relative link targets outside code (fenced blocks and inline code), without their #anchor."""
    text = CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http:, mailto: ..., or an anchor in the same page
        targets.append(unquote(target.split("#", 1)[0]))
    return targets


def test_the_link_pattern_finds_links_and_skips_code(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("[a](x.md) ![b](img/y.png \"t\") [c](https://e.org) [d](#here) `[e](no.md)`\n"
                    "```\n[f](no2.md)\n```\n[g](../z.md#part)\n", encoding="utf-8")
    assert relative_links(page) == ["x.md", "img/y.png", "../z.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves(page):
    missing = [t for t in relative_links(page) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(REPO_ROOT)} links to missing files: {missing}"


def test_readme_is_a_landing_page():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    # The first commands a newcomer runs, and the screenshot.
    for line in ("pip install -r requirements.txt", "streamlit run app.py", "pytest", "docs/use/screenshots/analyze.png"):
        assert line in readme
    assert "docs/README.md" in relative_links(REPO_ROOT / "README.md")


def test_docs_index_links_every_page_and_every_page_has_a_group():
    linked = {(INDEX.parent / t).resolve() for t in relative_links(INDEX)}
    pages = [p for p in PAGES[1:] if p != INDEX]
    unlinked = [str(p.relative_to(REPO_ROOT)) for p in pages if p.resolve() not in linked]
    assert not unlinked, f"docs pages docs/README.md does not link: {unlinked}"
    outside = [str(p.relative_to(REPO_ROOT)) for p in pages if p.relative_to(INDEX.parent).parts[0] not in GROUPS]
    assert not outside, f"docs pages outside the groups {GROUPS}: {outside}"
