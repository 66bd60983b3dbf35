"""The report as a list of blocks, rendered twice: to Markdown (markdown.py) and to self-contained HTML (html.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    path: str  # relative to the OUT directory
    caption: str
    png: bytes = field(repr=False, default=b"")


Block = Heading | Paragraph | Table | Figure
