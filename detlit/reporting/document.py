"""The report as a document: a list of blocks (headings, text, tables, figures), and its two renderings.

:func:`render_html` writes one self-contained page (style inline, pictures as ``data:`` URIs, no
script, no request); :func:`render_markdown` writes the same blocks as Markdown whose pictures are
PNG files beside it.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from typing import TypeAlias

NO_VALUE = "-"  # what a table cell shows for a number that is not known


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    """A paragraph; text in backticks is shown as code."""

    text: str


@dataclass
class Note:
    """Something the report could not show, and why."""

    text: str


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    numeric: set[int] = field(default_factory=set)  # right-aligned columns


@dataclass
class Figure:
    name: str  # file name stem, unique in the report
    png: bytes
    caption: str


@dataclass
class Gallery:
    figures: list[Figure]
    columns: int = 2


@dataclass
class Code:
    """Preformatted text, collapsed under ``summary`` when one is given."""

    text: str
    summary: str | None = None
    language: str = ""


@dataclass
class Callout:
    title: str
    text: str
    kind: str = "warn"  # "warn" or "ok"


Block: TypeAlias = Heading | Text | Note | Table | Figure | Gallery | Code | Callout


@dataclass
class Document:
    title: str
    subtitle: str
    blocks: list[Block]

    def figures(self) -> list[Figure]:
        out: list[Figure] = []
        for block in self.blocks:
            if isinstance(block, Figure):
                out.append(block)
            elif isinstance(block, Gallery):
                out.extend(block.figures)
        return out


CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1d2330;
  max-width: 1180px; margin: 0 auto; padding: 20px 28px 60px; line-height: 1.45; background: #fff; }
h1 { font-size: 1.7em; margin-bottom: 0.1em; }
h2 { font-size: 1.3em; border-bottom: 2px solid #dfe3ea; padding-bottom: 4px; margin-top: 2em; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
.subtitle { color: #5b6577; margin-top: 0; }
nav { background: #f5f7fa; border: 1px solid #dfe3ea; border-radius: 6px; padding: 8px 14px; font-size: 0.92em; }
nav a { margin-right: 14px; color: #2456a6; text-decoration: none; white-space: nowrap; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 0.88em; }
th, td { border: 1px solid #dfe3ea; padding: 3px 9px; text-align: left; vertical-align: top; }
th { background: #f0f3f7; }
td code { word-break: break-all; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafbfc; }
code, pre { font-family: SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.88em; }
code { background: #f0f3f7; padding: 0 3px; border-radius: 3px; }
pre { background: #f5f7fa; border: 1px solid #dfe3ea; padding: 10px; overflow-x: auto; }
details summary { cursor: pointer; color: #2456a6; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid #dfe3ea; }
figure img { cursor: zoom-in; }
figure img:focus { position: fixed; inset: 0; margin: auto; max-width: 98vw; max-height: 98vh; width: auto;
  z-index: 10; cursor: zoom-out; box-shadow: 0 0 0 100vmax rgba(0, 0, 0, 0.75); outline: none; }
figcaption { font-size: 0.85em; color: #5b6577; }
.gallery { display: grid; gap: 14px; align-items: start; }
.columns2 { grid-template-columns: repeat(2, minmax(0, 1fr)); }
.columns3 { grid-template-columns: repeat(3, minmax(0, 1fr)); }
.gallery figure { margin: 0; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 6px 10px; }
.callout { border-left: 4px solid #d9534f; background: #fdf1f0; padding: 6px 12px; margin: 10px 0; }
.callout.ok { border-left-color: #3c9a4a; background: #eef8f0; }
.callout b { display: block; }
"""


def _inline_html(text: str) -> str:
    """Escaped text; spans in backticks become code."""
    parts = text.split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def _anchor(text: str, index: int) -> str:
    return f"s{index}-" + re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(document: Document) -> str:
    """The document as one HTML page: inline style, pictures as data URIs, no script, no links out."""
    body: list[str] = []
    toc: list[str] = []
    for index, block in enumerate(document.blocks):
        if isinstance(block, Heading):
            anchor = _anchor(block.text, index)
            if block.level == 2:
                toc.append(f'<a href="#{anchor}">{html.escape(block.text)}</a>')
            body.append(f'<h{block.level} id="{anchor}">{html.escape(block.text)}</h{block.level}>')
        elif isinstance(block, Text):
            body.append(f"<p>{_inline_html(block.text)}</p>")
        elif isinstance(block, Note):
            body.append(f'<p class="note">{_inline_html(block.text)}</p>')
        elif isinstance(block, Callout):
            kind = "callout ok" if block.kind == "ok" else "callout"
            body.append(f'<div class="{kind}"><b>{html.escape(block.title)}</b>{_inline_html(block.text)}</div>')
        elif isinstance(block, Table):
            body.append(_html_table(block))
        elif isinstance(block, Figure):
            body.append(_html_figure(block))
        elif isinstance(block, Gallery):
            figures = "".join(_html_figure(f) for f in block.figures)
            body.append(f'<div class="gallery columns{block.columns}">{figures}</div>')
        elif isinstance(block, Code):
            pre = f"<pre>{html.escape(block.text)}</pre>"
            if block.summary:
                pre = f"<details><summary>{html.escape(block.summary)}</summary>{pre}</details>"
            body.append(pre)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            # No request may leave the page: data: images only, no scripts, no fonts, no frames.
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
            "style-src 'unsafe-inline'\">",
            f"<title>{html.escape(document.title)}</title>",
            f"<style>{CSS}</style>",
            "</head>",
            "<body>",
            f"<h1>{html.escape(document.title)}</h1>",
            f'<p class="subtitle">{_inline_html(document.subtitle)}</p>',
            "<nav>" + " ".join(toc) + "</nav>",
            *body,
            "</body>",
            "</html>",
            "",
        ]
    )


def _html_table(table: Table) -> str:
    def cell(tag: str, column: int, text: str) -> str:
        css = ' class="num"' if column in table.numeric else ""
        return f"<{tag}{css}>{_inline_html(text)}</{tag}>"

    head = "".join(cell("th", i, c) for i, c in enumerate(table.columns))
    rows = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _html_figure(figure: Figure) -> str:
    alt = html.escape(figure.caption, quote=True)
    return (
        f'<figure><img src="{_data_uri(figure.png)}" alt="{alt}" tabindex="0" title="click: full size">'
        f"<figcaption>{_inline_html(figure.caption)}</figcaption></figure>"
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(document: Document, files_dir: str) -> str:
    """The document as Markdown; figures link to ``files_dir/<name>.png`` (relative)."""
    out = [f"# {document.title}", "", document.subtitle, ""]
    for block in document.blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Text):
            out += [block.text, ""]
        elif isinstance(block, Note):
            out += [f"> **Note:** {block.text}", ""]
        elif isinstance(block, Callout):
            out += [f"- **{block.title}.** {block.text}", ""]
        elif isinstance(block, Table):
            align = ["---:" if i in block.numeric else "---" for i in range(len(block.columns))]
            out.append("| " + " | ".join(_md_cell(c) for c in block.columns) + " |")
            out.append("| " + " | ".join(align) + " |")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            out.append("")
        elif isinstance(block, Figure):
            out += [f"![{_md_cell(block.caption)}]({files_dir}/{block.name}.png)", "", f"*{block.caption}*", ""]
        elif isinstance(block, Gallery):
            for figure in block.figures:
                out += [f"![{_md_cell(figure.caption)}]({files_dir}/{figure.name}.png)", "", figure.caption, ""]
        elif isinstance(block, Code):
            fence = "```"
            code = [f"{fence}{block.language}", block.text.rstrip("\n"), fence]
            if block.summary:
                out += [
                    "<details>",
                    f"<summary>{html.escape(block.summary)}</summary>",
                    "",
                    *code,
                    "",
                    "</details>",
                    "",
                ]
            else:
                out += [*code, ""]
    return "\n".join(out).rstrip("\n") + "\n"
