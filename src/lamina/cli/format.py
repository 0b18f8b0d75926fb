"""Human forms of sizes, ages and tables — the CLI's only drawing code."""

from __future__ import annotations

import datetime as _dt
import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


def human_size(n: int | float) -> str:
    """Docker's units: decimal, 3 significant digits (``12.3MB``)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(value)}B"
            return f"{value:.3g}{unit}"
        value /= 1000
    return f"{value}B"  # pragma: no cover


def parse_time(text: str | None) -> _dt.datetime | None:
    if not text:
        return None
    try:
        t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=_dt.UTC)


def human_age(text: str | None, now: _dt.datetime | None = None) -> str:
    t = parse_time(text)
    if t is None:
        return "N/A"
    now = now or _dt.datetime.now(_dt.UTC)
    secs = int((now - t).total_seconds())
    if secs < 0:
        return "in the future"
    for unit, size in (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400),
                       ("day", 86400), ("hour", 3600), ("minute", 60)):
        if secs >= size:
            k = secs // size
            return f"{k} {unit}{'s' if k > 1 else ''} ago" if k > 1 else (
                f"About an {unit} ago" if unit == "hour" else f"1 {unit} ago")
    return f"{secs} seconds ago" if secs > 1 else "Less than a second ago"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A Docker-style table: capital headers, columns padded by three spaces, no borders,
    never wrapped (pipes and scripts see whole lines)."""
    widths = [len(h) for h in headers]
    for r in rows:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for r in [list(headers), *[list(x) for x in rows]]:
        cells = [c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r)]
        lines.append("   ".join(cells).rstrip())
    sys.stdout.write("\n".join(lines) + "\n")


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")

