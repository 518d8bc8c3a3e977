"""Numbers and durations as the dialogs write them."""

from __future__ import annotations

from typing import Any


def format_duration(seconds: float) -> str:
    """12 s, 3 min 05 s, 1 h 02 min."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_number(value: Any, digits: int = 3) -> str:
    """A metric for a table cell: 3 decimals, an en dash for missing or NaN."""
    if value is None:
        return "–"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "–" if value != value else f"{value:.{digits}f}"
