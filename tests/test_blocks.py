"""The block renderer's two renderings agree with what a Markdown viewer shows: a table
cell holding pipes (plain, bold, in code), `<`, `&` or a backslash stays one cell with the
same text in report.md (parsed back by markdown-it, CommonMark + GFM tables) and in the
HTML page."""

from html.parser import HTMLParser
from pathlib import Path

from markdown_it import MarkdownIt

from markdown_check import markdown_problems
from robust_deepfake.report.blocks import Bullets, Contents, Heading, Para, Table, anchors, to_html, to_markdown

HEADER = ["seed", "|L_pert − L_clean|", "a<b & c"]
ROWS = [
    ["0", "x | y", "`p|q` and `a<b`"],
    ["1", "**b|c** or *e|f*", "back\\slash \\| pipe"],
    ["2", "|", "||"],
]
SHOWN = [  # what a reader sees in each cell: the text without its inline markup
    ["seed", "|L_pert − L_clean|", "a<b & c"],
    ["0", "x | y", "p|q and a<b"],
    ["1", "b|c or e|f", "back\\slash \\| pipe"],
    ["2", "|", "||"],
]


class _Cells(HTMLParser):
    """The text of every th/td, row by row, inside the first <table>."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _cells(page: str) -> list[list[str]]:
    parser = _Cells()
    parser.feed(page)
    return parser.rows


def test_a_table_with_pipes_parses_back_to_its_cells(tmp_path: Path):
    blocks = [Heading("Why |x|"), Table(HEADER, ROWS)]
    markdown = to_markdown(blocks, tmp_path)
    assert markdown_problems(markdown, tmp_path) == []
    viewer = MarkdownIt("commonmark").enable("table").render(markdown)
    assert _cells(viewer) == SHOWN
    assert _cells(to_html(blocks, "t", tmp_path)) == SHOWN


def test_text_outside_tables_shows_the_same_in_both_renderings(tmp_path: Path):
    """Code spans stay literal (no `&lt;` shown), labels never become HTML, backslashes stay."""
    blocks = [Para("use `a<b && c` for <b>x</b> & a\\b", lead="Note:"), Bullets(["`x|y` <i>"])]
    viewer = MarkdownIt("commonmark").enable("table").render(to_markdown(blocks, tmp_path))
    page = to_html(blocks, "t", tmp_path)
    for rendered in (viewer, page):
        assert "<code>a&lt;b &amp;&amp; c</code>" in rendered
        assert "for &lt;b&gt;x&lt;/b&gt; &amp; a\\b" in rendered
        assert "<code>x|y</code> &lt;i&gt;" in rendered


def test_the_contents_link_every_section_heading_in_both_renderings(tmp_path: Path):
    """GitHub's anchors (lower case, punctuation dropped, `-1` after a repeat); every link
    of the HTML page lands on a heading id, and markdown-it renders the Markdown links."""
    import re

    blocks = [Heading("Report", 1), Contents(), Heading("Verdict"), Para("x"), Heading("How many seeds?", 3),
              Heading("Appendix: why `reg.epsilon` (a fixed benchmark)"), Heading("Verdict")]
    assert list(anchors(blocks).values()) == ["report", "verdict", "how-many-seeds",
                                              "appendix-why-regepsilon-a-fixed-benchmark", "verdict-1"]
    markdown = to_markdown(blocks, tmp_path)
    viewer = MarkdownIt("commonmark").enable("table").render(markdown)
    wanted = ["#verdict", "#appendix-why-regepsilon-a-fixed-benchmark", "#verdict-1"]
    assert re.findall(r'<a href="([^"]+)"', viewer) == wanted
    page = to_html(blocks, "t", tmp_path)
    assert re.findall(r'<a href="([^"]+)"', page) == wanted
    ids = set(re.findall(r'<h\d id="([^"]+)"', page))
    assert {link[1:] for link in wanted} <= ids
    assert page.index('<nav class="contents">') < page.index('id="verdict"')
