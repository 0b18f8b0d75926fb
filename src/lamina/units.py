"""Sizes as people read them — part of the vocabulary every room shares (build output,
the graph's labels, the web pages and the CLI all print the same ``12.3MB``)."""

from __future__ import annotations


def human_size(n: int | float) -> str:
    """Docker's units: decimal, 3 significant digits (``12.3MB``)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)}B" if unit == "B" else f"{value:.3g}{unit}"
        value /= 1000
    return f"{value}B"  # pragma: no cover
