"""The standalone HTML page shell shared by report.html and study.html: one style sheet,
no external resources, so a page opens offline wherever it is moved."""

from __future__ import annotations

import html

BASE_CSS = """\
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead { background: #f2f2f2; }
img { max-width: 100%; display: block; margin: 1em 0; }
"""


def html_page(title: str, body: str, extra_css: str = "") -> str:
    """A complete HTML document: `title` escaped, `body` inserted as is (already HTML),
    `extra_css` (whole rules, one a line) appended to the shared style sheet."""
    css = BASE_CSS + (extra_css.rstrip("\n") + "\n" if extra_css else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
{css}</style></head><body>
{body}
</body></html>
"""
