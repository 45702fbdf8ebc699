"""The study report's document model and its Markdown and HTML renderings.

One list of blocks (headings, paragraphs, lists, tables, figures) is rendered twice: as
Markdown with its figures as files beside it, and as HTML in which every interpolated
string is escaped and every figure is embedded as a base64 PNG, so the page opens offline
and survives being moved.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from robust_deepfake.report.page import html_page


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
    path: Path  # the PNG, inside out_dir/study_figures
    alt: str
    caption: str


Block = Heading | Para | Bullets | Table | Figure


def _md(text: str) -> str:
    """Markdown text: `<` escaped so a viewer never renders a label as raw HTML."""
    return text.replace("&", "&amp;").replace("<", "&lt;")


def _md_cell(text: str) -> str:
    return _md(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block], base: Path) -> str:
    """study.md: figures as links relative to `base` (the folder study.md is in)."""
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append("#" * block.level + " " + _md(block.text))
        elif isinstance(block, Para):
            out.append((f"**{_md(block.lead)}** " if block.lead else "") + _md(block.text))
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {_md(item)}" for item in block.items))
        elif isinstance(block, Table):
            lines = ["| " + " | ".join(map(_md_cell, block.header)) + " |", "|" + "---|" * len(block.header)]
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in block.rows]
            out.append("\n".join(lines))
        else:
            alt = _md(block.alt).replace("[", "(").replace("]", ")")
            out.append(f"![{alt}]({block.path.relative_to(base).as_posix()})\n\n*{_md(block.caption)}*")
    return "\n\n".join(out) + "\n"


def to_html(blocks: Sequence[Block], title: str) -> str:
    """study.html: every string escaped, every figure embedded (data: URI), nothing fetched."""
    esc = html.escape
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            lead = f"<strong>{esc(block.lead)}</strong> " if block.lead else ""
            out.append(f"<p>{lead}{esc(block.text)}</p>")
        elif isinstance(block, Bullets):
            out.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{esc(h)}</th>" for h in block.header)
            body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            out.append(f'<figure><img alt="{esc(block.alt)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{esc(block.caption)}</figcaption></figure>")
    return html_page(title, "\n".join(out), extra_css="figcaption { font-size: 0.85em; color: #555; }")
