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


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2,
               "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": 1024,
               "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_size(text: str) -> int:
    """Bytes, in Docker's decimal units (kB, MB, GB) or binary ones (KiB, MiB, GiB);
    ``ValueError`` for anything else (the caller names the option in its message)."""
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if m is None or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
