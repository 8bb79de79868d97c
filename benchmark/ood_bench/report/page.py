"""A report as a list of blocks, rendered both as a static HTML page and as GitHub Markdown.

Both renderings come from the same blocks, so ``index.html`` and ``report.md`` always hold the same
content. The HTML page is self-contained (inline CSS, no script, no CDN); images are relative links.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from tabulate import tabulate


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class TableBlock:
    headers: list[str]
    rows: list[list[str]]
    strong: frozenset[tuple[int, int]] = frozenset()  # (row, column) cells shown in bold


@dataclass(frozen=True)
class Collapsible:
    """Blocks hidden behind a one-line summary (HTML ``<details>``, which GitHub Markdown also renders)."""

    summary: str
    blocks: list


@dataclass(frozen=True)
class Image:
    src: str  # relative to the report folder
    alt: str


Block = Heading | Text | Bullets | TableBlock | Image | Collapsible

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1500px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0 1em; display: block; overflow-x: auto;
        max-width: 100%; }
details { margin: 1em 0; } summary { cursor: pointer; font-weight: 600; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: left; white-space: nowrap; }
th { background: #f3f3f3; }
.figures { display: flex; flex-wrap: wrap; gap: .5em; align-items: flex-start; }
.figures img { max-width: 100%; border: 1px solid #eee; }
ul { line-height: 1.4; }
"""


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, blocks: list[Block]) -> str:
    """GitHub Markdown of the blocks."""
    return "\n".join([f"# {title}", "", *_markdown(blocks)])


def _markdown(blocks: list[Block]) -> list[str]:
    parts: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            parts += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Text):
            parts += [block.text, ""]
        elif isinstance(block, Bullets):
            parts += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, TableBlock):
            rows = [[f"**{_md_cell(c)}**" if (i, j) in block.strong else _md_cell(c) for j, c in enumerate(row)]
                    for i, row in enumerate(block.rows)]
            parts += [tabulate(rows, headers=[_md_cell(h) for h in block.headers], tablefmt="github",
                               disable_numparse=True), ""]
        elif isinstance(block, Image):
            parts += [f"![{block.alt}]({block.src})", ""]
        elif isinstance(block, Collapsible):
            parts += [f"<details><summary>{html.escape(block.summary)}</summary>", "", *_markdown(block.blocks),
                      "</details>", ""]
    return parts


def render_html(title: str, blocks: list[Block]) -> str:
    """A single static HTML page of the blocks (escaped text, inline CSS, relative image links)."""
    body = [f"<h1>{html.escape(title)}</h1>", *_html(blocks)]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def _html(blocks: list[Block]) -> list[str]:
    e = html.escape
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{e(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            body.append(f"<p>{e(block.text)}</p>")
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, TableBlock):
            head = "".join(f"<th>{e(str(h))}</th>" for h in block.headers)
            rows = "".join("<tr>" + "".join(f"<td><strong>{e(str(c))}</strong></td>" if (i, j) in block.strong
                                            else f"<td>{e(str(c))}</td>" for j, c in enumerate(row)) + "</tr>"
                           for i, row in enumerate(block.rows))
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Image):
            img = f'<img src="{e(block.src)}" alt="{e(block.alt)}">'
            if body and body[-1].endswith("</div>") and body[-1].startswith('<div class="figures">'):
                body[-1] = body[-1][: -len("</div>")] + img + "</div>"  # consecutive images flow side by side
            else:
                body.append(f'<div class="figures">{img}</div>')
        elif isinstance(block, Collapsible):
            body.append(f"<details><summary>{e(block.summary)}</summary>" + "\n".join(_html(block.blocks))
                        + "</details>")
    return body
