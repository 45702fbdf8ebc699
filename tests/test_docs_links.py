"""README.md and docs/*.md link only to what exists: every relative link names an existing
file, and every `#anchor` names a heading of its target (GitHub's anchor rules). No text
in the repository cites a top-level design file that is not there."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def _prose(markdown: str) -> str:
    """The text with fenced code blocks and code spans removed: links there are code."""
    return _CODE_SPAN.sub("", _FENCE.sub("", markdown))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline markup dropped, lower case, every character
    but letters, digits, '_', '-' and spaces removed, spaces turned into '-'."""
    parts = re.split(r"(`+[^`]*`+)", heading)  # code spans are literal text, the rest markup
    text = "".join(part.strip("`") if part.startswith("`") else
                   re.sub(r"<[^>]+>|\*", "", re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", part))
                   for part in parts).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor a page's headings define, duplicates numbered as GitHub does (-1, -2)."""
    seen: dict[str, int] = {}
    found = set()
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    return _LINK.findall(_prose(page.read_text(encoding="utf-8")))


def broken_links(page: Path) -> list[str]:
    """`target: reason` for each relative link of `page` that does not resolve."""
    problems = []
    for target in links(page):
        if _EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        file = page if not path_part else (page.parent / unquote(path_part)).resolve()
        if not file.exists():
            problems.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and unquote(anchor) not in anchors(file):
            problems.append(f"{target}: {file.name} has no heading with this anchor")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_readme_links_every_docs_page() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(ROOT / "README.md")
              if not _EXTERNAL.match(target)}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


def test_no_reference_to_a_missing_top_level_design_file() -> None:
    name = "ARCHITECTURE" + ".md"  # spelled in two parts so this file does not cite it
    if (ROOT / name).exists():
        return
    folders = ["src", "stages", "flows", "tests", "benchmarks", "tools", "configs", "docs"]
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "params.yaml", ROOT / "dvc.yaml"]
    for folder in folders:
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".md", ".yaml", ".toml"}]
    citing = [str(p.relative_to(ROOT)) for p in files
              if p.is_file() and name in p.read_text(encoding="utf-8", errors="replace")]
    assert citing == []


# --- the checker itself ---------------------------------------------------------------


def test_slug_follows_github() -> None:
    assert slug("The data guard: data changes only on purpose") == "the-data-guard-data-changes-only-on-purpose"
    assert slug("`train_baseline@<seed>` and `train_reg@<seed>`") == "train_baselineseed-and-train_regseed"
    assert slug("Choosing `reg.epsilon`: the dose-response") == "choosing-regepsilon-the-dose-response"


def test_a_broken_link_and_a_missing_anchor_are_found(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Top\n\n## Same\n\n## Same\n")
    page = tmp_path / "b.md"
    page.write_text(
        "[ok](a.md#top) [dup](a.md#same-1) [self](#here) [web](https://example.org/x)\n"
        "[gone](missing.md) [no anchor](a.md#nowhere) `[code](nope.md)`\n"
        "```\n[fenced](nope.md)\n```\n# Here\n"
    )
    assert broken_links(page) == ["missing.md: no such file", "a.md#nowhere: a.md has no heading with this anchor"]
