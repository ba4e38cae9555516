"""Printing tables whole: a number is never cut to ``0.0…``.

A table wider than the terminal loses columns from the right, least important first, and says
so in its caption (the CSV/JSON beside it hold everything); if it is still too wide, its cells
wrap onto more lines (a number folds, it is never cut). Printed into a pipe or a file it is
printed at its natural width, whatever the terminal would have been.
"""

from __future__ import annotations

from collections.abc import Sequence


def print_table(console, table, *, droppable: Sequence[str] = (), source: str = "") -> None:
    """Print ``table`` on ``console`` without truncating a cell (see the module doc).

    ``droppable``: column headers that may be left out, least important first; ``source``:
    where the left-out columns can be read (named in the caption).
    """
    from rich.console import Console
    from rich.measure import Measurement

    def width(t) -> int:  # the natural width, not capped at the terminal's
        return Measurement.get(console, console.options.update_width(100_000), t).maximum

    if not console.is_terminal:
        if width(table) > console.width:
            console = Console(
                file=console.file,
                width=width(table),
                force_terminal=False,
                no_color=console.no_color,
                soft_wrap=False,
            )
        console.print(table)
        return
    dropped = []
    for header in droppable:
        if width(table) <= console.width:
            break
        index = next((i for i, c in enumerate(table.columns) if str(c.header) == header), None)
        if index is None:
            continue
        table.columns.pop(index)
        dropped.append(header)
    if dropped:
        note = f"not shown (terminal too narrow): {', '.join(dropped)}"
        if source:
            note += f"; all columns in {source}"
        table.caption = f"{table.caption}\n{note}" if table.caption else note
        table.caption_justify = "left"
    if width(table) > console.width:
        # rich would cut the widest cells to "0.0…"; folding keeps every character.
        for column in table.columns:
            column.overflow = "fold"
            column.no_wrap = False
    console.print(table)
