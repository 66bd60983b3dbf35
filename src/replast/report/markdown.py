"""Blocks → GitHub-flavoured Markdown; figures are linked as PNG files next to report.md."""

from __future__ import annotations

from collections.abc import Sequence

from replast.report.blocks import Block, Figure, Heading, Paragraph, Table


def _text(text: str) -> str:
    """Literal text: a backslash, '<' (raw HTML such as <lambda>) and '*' (emphasis) shown as written."""
    return str(text).replace("\\", "\\\\").replace("<", "&lt;").replace("*", "\\*")


def _cell(text: str) -> str:
    return _text(text).replace("|", "\\|").replace("\n", " ")


def _table(table: Table) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in table.headers) + " |",
             "|" + "|".join("---" for _ in table.headers) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    if table.caption:
        lines.append(f"\n*{table.caption}*")
    return "\n".join(lines)


def to_markdown(blocks: Sequence[Block]) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append("#" * block.level + " " + block.text)
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Table):
            parts.append(_table(block))
        elif isinstance(block, Figure):
            parts.append(f"![{_cell(block.caption)}]({block.path})")
    return "\n\n".join(parts) + "\n"
