"""Every relative link of README.md and docs/*.md points to a file that exists, and every
``#anchor`` it names is a heading of that file (GitHub's anchors)."""

import os
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")
COMMENT = re.compile(r"<!--.*?-->", re.S)
# [text](target) and ![alt](target); a target has no spaces (an optional "title" after one)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """``text`` without code blocks, inline code and HTML comments (no links live there)."""
    return CODE.sub("", COMMENT.sub("", FENCE.sub("", text)))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation other than
    '-' and '_' removed, spaces to '-' (letters of any script kept)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of ``path``'s headings, repeats numbered as GitHub does (-1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path.read_text()))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]  # http:, https:, mailto:, ...


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in relative_links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file)).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target}: no file {os.path.relpath(dest, ROOT)}")
        elif anchor and dest.suffix == ".md" and unquote(anchor) not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert relative_links(page) or page.name != "README.md"  # README links its pages
    assert broken_links(page) == []


def test_readme_links_every_docs_page_and_each_links_back():
    readme_targets = {t.partition("#")[0] for t in relative_links(ROOT / "README.md")}
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme_targets, f"README does not link {page.name}"
        back = {t.partition("#")[0] for t in relative_links(page)}
        assert "../README.md" in back, f"{page.name} does not link back to README"


def test_the_checker_finds_broken_files_and_anchors(tmp_path):
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "a.md"
    (tmp_path / "b.md").write_text("# Top\n\n## Mixed precision (eq. 12)\n\n## τ sweep\n"
                                   "```\n# not a heading\n```\n## Top\n")
    page.write_text(
        "[ok](../b.md#mixed-precision-eq-12) [ok](../b.md#τ-sweep) [ok](../b.md#top-1)\n"
        "![img](../b.md) [web](https://example.com/x) `[code](nowhere.md)`\n"
        "<!-- [hidden](nowhere.md) -->\n```\n[fenced](nowhere.md)\n```\n"
        "[gone](../missing.md) [bad](../b.md#not-a-heading) [self](#nothing)\n")
    assert anchors(tmp_path / "b.md") == {"top", "mixed-precision-eq-12", "τ-sweep", "top-1"}
    broken = broken_links(page)
    assert len(broken) == 3, broken
    assert broken[0].startswith("../missing.md: no file")
    assert broken[1] == "../b.md#not-a-heading: no heading with anchor #not-a-heading in b.md"
    assert broken[2] == "#nothing: no heading with anchor #nothing in a.md"
    assert slug("CUDA graphs (`recon.cuda_graph: true`)") == "cuda-graphs-reconcuda_graph-true"
    assert slug("What a run writes (`runs/<name>/`)") == "what-a-run-writes-runsname"
