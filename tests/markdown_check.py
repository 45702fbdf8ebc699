"""What a Markdown viewer would show broken in a generated report (report.md, study.md)."""

from __future__ import annotations

import re
from pathlib import Path


def markdown_problems(markdown: str, folder: Path) -> list[str]:
    """What a Markdown viewer would show broken: a table line it does not render as a table
    row (a raw `| … |` paragraph), a row whose cell count differs from its header (an
    unescaped pipe), an image that is not there. CommonMark + GFM tables (markdown-it-py)."""
    from markdown_it import MarkdownIt

    problems = []
    blocks: list[list[str]] = []
    previous = ""
    for line in markdown.splitlines():
        if line.startswith("|"):
            if previous.startswith("|"):
                blocks[-1].append(line)
            else:
                blocks.append([line])
        previous = line
    cells = lambda row: len(re.findall(r"(?<!\\)\|", row)) - 1  # noqa: E731
    for block in blocks:
        if len(block) < 2 or not re.fullmatch(r"\|(---\|)+", block[1]):
            problems.append(f"table without a separator row: {block[0][:60]}")
        problems += [f"{cells(row)} cells under a {cells(block[0])}-column header: {row[:60]}"
                     for row in block[2:] if cells(row) != cells(block[0])]
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    rendered = sum(1 for t in tokens if t.type == "tr_open")
    if rendered != sum(len(b) - 1 for b in blocks):
        problems.append(f"{sum(len(b) - 1 for b in blocks)} table lines, {rendered} rendered table rows")
    html = MarkdownIt("commonmark").enable("table").render(markdown)
    problems += [f"raw pipe paragraph: {p[:60]}" for p in re.findall(r"<p>\|[^<]*", html)]
    problems += [f"missing image: {path}" for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
                 if not (folder / path).is_file()]
    return problems
