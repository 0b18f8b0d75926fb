"""A container's log: what its process wrote, one record a line, in the store.

The format is CRI's (Kubernetes' "k8s-file", which Podman's conmon writes too)::

    2026-12-02T20:50:01.123456789Z stdout F a whole line
    2026-12-02T20:50:01.123460000Z stderr P the start of a line not ended yet

``F``: the content ended with a newline (not stored); ``P``: a partial line, continued
by the stream's next record.  A record is written as soon as the process wrote, so
``logs -f`` follows it live; the stream names keep stdout and stderr apart.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def timestamp(when: float | None = None) -> str:
    """RFC 3339 with nanoseconds, UTC (Docker's and CRI's log times)."""
    ns = time.time_ns() if when is None else int(when * 1e9)
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


class LogWriter:
    """Appends records for one container; ``write(stream, data)`` per read."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def write(self, stream: str, data: bytes) -> None:
        lines = data.split(b"\n")
        out = []
        stamp = timestamp().encode()
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            if last and not line:
                break
            out.append(b"%s %s %s %s\n" % (stamp, stream.encode(), b"P" if last else b"F",
                                           line))
        if out:
            data = b"".join(out)
            while data:
                data = data[os.write(self.fd, data):]

    def close(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True)
class Record:
    stream: str      # "stdout" or "stderr"
    data: bytes      # with its newline when the line is whole


def parse(line: bytes) -> Record | None:
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr"):
        return None
    content = parts[3] if len(parts) == 4 else b""
    return Record(parts[1].decode(), content + (b"\n" if parts[2] == b"F" else b""))


class LogReader:
    """Records of a log file from the start (or the last ``tail`` whole lines); ``more``
    returns the records written since the last call (for ``logs -f``)."""

    def __init__(self, path: Path, tail: int | None = None) -> None:
        self.path = path
        self.offset = 0
        self.tail = tail
        self.rest = b""

    def more(self) -> Iterator[Record]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        self.offset += len(chunk)
        data = self.rest + chunk
        lines = data.split(b"\n")
        self.rest = lines.pop()
        records = (r for r in map(parse, lines) if r is not None)
        if self.tail is not None:
            # Docker counts lines of output; a partial record belongs to the next line.
            kept: deque[list[Record]] = deque(maxlen=self.tail) if self.tail else deque(
                maxlen=1)
            current: list[Record] = []
            for rec in records:
                current.append(rec)
                if rec.data.endswith(b"\n"):
                    kept.append(current)
                    current = []
            wanted = [r for group in kept for r in group] if self.tail else []
            self.tail = None
            yield from wanted + current
            return
        yield from records
