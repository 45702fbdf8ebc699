"""The reports' document model and its two renderings (report.md/.html, study.md/.html).

One list of blocks (headings, paragraphs, lists, tables, figures) is rendered twice: as
Markdown with its figures as files beside it, and as one standalone HTML page in which
every interpolated string is escaped, every figure is embedded as a base64 PNG and no
resource is fetched, so the page opens offline and survives being moved. Text may carry
the inline Markdown the reports use: `**strong**`, `*emphasis*` and `` `code` ``.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str
    lead: str = ""  # bold opening words


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Figure:
    path: Path  # the PNG: absolute, or relative to the document's folder
    alt: str
    caption: str = ""


@dataclass(frozen=True)
class Contents:
    """A table of contents: a linked list of the document's headings of `level` (rendered
    where the block stands, from every such heading in the document)."""

    level: int = 2
    title: str = "Contents"


Block = Heading | Para | Bullets | Table | Figure | Contents

BASE_CSS = """\
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead { background: #f2f2f2; }
img { max-width: 100%; display: block; margin: 1em 0; }
code { background: #f5f5f5; padding: 0 3px; }
figcaption { font-size: 0.85em; color: #555; }
"""


_CODE = re.compile(r"`([^`]+)`")
_STRONG = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_EM = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])")


def _md(text: str) -> str:
    """Markdown text that a viewer shows as `inline_html` does: outside code spans `\\`,
    `&` and `<` are escaped (no label renders as raw HTML or loses a backslash); a code span
    is kept verbatim, as Markdown shows code spans literally."""
    parts = _CODE.split(text)
    for position in range(0, len(parts), 2):
        parts[position] = parts[position].replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;")
    for position in range(1, len(parts), 2):
        parts[position] = f"`{parts[position]}`"
    return "".join(parts)


def _md_cell(text: str) -> str:
    """A table cell: every `|` escaped, in code spans too (GFM drops that backslash), so a
    pipe in a label never splits the cell; one line."""
    return _md(text).replace("|", "\\|").replace("\n", " ")


_NOT_IN_ANCHOR = re.compile(r"[^\w\- ]")


def anchors(blocks: Sequence[Block]) -> dict[int, str]:
    """The anchor of every heading, by its position in `blocks`, as GitHub names them (the
    text without its markup, lower case, punctuation dropped, spaces as hyphens; `-1`, `-2`
    … after a repeat), so a contents link works in report.md on GitHub and in report.html."""
    seen: dict[str, int] = {}
    found = {}
    for position, block in enumerate(blocks):
        if isinstance(block, Heading):
            plain = block.text.replace("`", "").replace("*", "")
            slug = _NOT_IN_ANCHOR.sub("", plain.lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found[position] = slug if count == 0 else f"{slug}-{count}"
    return found


def _entries(blocks: Sequence[Block], contents: Contents) -> list[tuple[str, str]]:
    """(heading text, anchor) of every heading at the contents' level."""
    named = anchors(blocks)
    return [(block.text, named[position]) for position, block in enumerate(blocks)
            if isinstance(block, Heading) and block.level == contents.level]


def _relative(path: Path, base: Path) -> str:
    return (path.relative_to(base) if path.is_absolute() else path).as_posix()


def _markdown(block: Block, base: Path) -> str:
    if isinstance(block, Heading):
        return "#" * block.level + " " + _md(block.text)
    if isinstance(block, Para):
        return (f"**{_md(block.lead)}** " if block.lead else "") + _md(block.text)
    if isinstance(block, Bullets):
        return "\n".join(f"- {_md(item)}" for item in block.items)
    if isinstance(block, Table):
        lines = ["| " + " | ".join(map(_md_cell, block.header)) + " |", "|" + "---|" * len(block.header)]
        return "\n".join(lines + ["| " + " | ".join(map(_md_cell, row)) + " |" for row in block.rows])
    alt = _md(block.alt).replace("[", "(").replace("]", ")")
    link = f"![{alt}]({_relative(block.path, base)})"
    return link + (f"\n\n*{_md(block.caption)}*" if block.caption else "")


def _markdown_contents(blocks: Sequence[Block], contents: Contents) -> str:
    links = [f"- [{_md(text).replace('[', '(').replace(']', ')')}](#{anchor})"
             for text, anchor in _entries(blocks, contents)]
    return f"**{_md(contents.title)}**\n\n" + "\n".join(links)


def to_markdown(blocks: Sequence[Block], base: Path) -> str:
    """The Markdown document: figures as links relative to `base` (its folder)."""
    return "\n\n".join(_markdown_contents(blocks, block) if isinstance(block, Contents) else _markdown(block, base)
                       for block in blocks) + "\n"


def inline_html(text: str) -> str:
    """`text` escaped, with its inline Markdown (`code`, **strong**, *emphasis*) as HTML;
    nothing inside a code span is read as markup."""
    out = []
    for position, part in enumerate(_CODE.split(text)):
        if position % 2:
            out.append(f"<code>{html.escape(part)}</code>")
        else:
            part = _STRONG.sub(r"<strong>\1</strong>", html.escape(part))
            out.append(_EM.sub(r"<em>\1</em>", part))
    return "".join(out)


def _image_source(path: Path, base: Path) -> str:
    """A data: URI of the PNG; its relative link when the file is missing."""
    file = path if path.is_absolute() else base / path
    if not file.is_file():
        return html.escape(_relative(path, base))
    return "data:image/png;base64," + base64.b64encode(file.read_bytes()).decode("ascii")


def _html(block: Para | Bullets | Table | Figure, base: Path) -> str:
    if isinstance(block, Para):
        lead = f"<strong>{inline_html(block.lead)}</strong> " if block.lead else ""
        return f"<p>{lead}{inline_html(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{inline_html(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{inline_html(h)}</th>" for h in block.header)
        body = "".join("<tr>" + "".join(f"<td>{inline_html(c)}</td>" for c in row) + "</tr>" for row in block.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    caption = f"<figcaption>{inline_html(block.caption)}</figcaption>" if block.caption else ""
    return f'<figure><img alt="{html.escape(block.alt)}" src="{_image_source(block.path, base)}">{caption}</figure>'


def _html_heading(heading: Heading, anchor: str) -> str:
    return f'<h{heading.level} id="{html.escape(anchor)}">{inline_html(heading.text)}</h{heading.level}>'


def _html_contents(blocks: Sequence[Block], contents: Contents) -> str:
    links = "".join(f'<li><a href="#{html.escape(anchor)}">{inline_html(text)}</a></li>'
                    for text, anchor in _entries(blocks, contents))
    return f'<nav class="contents"><p><strong>{inline_html(contents.title)}</strong></p><ul>{links}</ul></nav>'


def to_html(blocks: Sequence[Block], title: str, base: Path) -> str:
    """One standalone page: every string escaped, every figure embedded, nothing fetched.
    Relative figure paths are read from `base` (the Markdown's folder)."""
    named = anchors(blocks)
    body = "\n".join(_html_contents(blocks, block) if isinstance(block, Contents)
                     else _html_heading(block, named[position]) if isinstance(block, Heading)
                     else _html(block, base) for position, block in enumerate(blocks))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
{BASE_CSS}</style></head><body>
{body}
</body></html>
"""
