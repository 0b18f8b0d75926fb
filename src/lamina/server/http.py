"""The few HTTP pieces the handlers share: a request context (``Rq``), an answer
(``Reply``) and sending it — plain ASGI, so the hot paths (manifest HEAD/GET, blob
GET) pay for nothing they do not use.

A blob body is sent from the store's file (or, for a blob kept as chunks, from its
``ChunkedFile``) in 1 MiB reads done in a worker thread, with
a single ``Range`` honoured (RFC 9110 §14: 206 with ``Content-Range``; 416 with
``Content-Range: bytes */SIZE`` when it starts past the end).  Several ranges, or a
malformed header, get the whole blob (a server MAY ignore Range).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol
from urllib.parse import parse_qsl

import anyio.to_thread

from lamina.digest import CHUNK

API_VERSION = (b"docker-distribution-api-version", b"registry/2.0")
JSON = "application/json"


class RangeFile(Protocol):
    """Bytes at any offset without a file descriptor of their own (store/chunks.py)."""

    def pread(self, n: int, offset: int, /) -> bytes: ...
    def close(self) -> None: ...


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # (path or RangeFile, start, length) to send as body; the file is closed when sent
    file: tuple[str | RangeFile, int, int] | None = None


@dataclass
class Rq:
    """One request: its ASGI scope and receive, and what routing and auth found."""

    scope: dict[str, Any]
    receive: Any
    method: str
    name: str = ""          # repository name as the client spelled it
    repo: str = ""          # canonical repository (``library/`` added)
    arg: str = ""           # reference, digest or upload id from the path
    user: str = ""          # authenticated user, "" for anonymous
    _headers: dict[str, str] | None = None
    _query: list[tuple[str, str]] | None = None

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            h: dict[str, str] = {}
            for k, v in self.scope["headers"]:
                key = k.decode("latin-1").lower()
                val = v.decode("latin-1")
                h[key] = f"{h[key]},{val}" if key in h else val
            self._headers = h
        return self._headers

    def query(self, key: str) -> str | None:
        for k, v in self.query_all():
            if k == key:
                return v
        return None

    def query_all(self) -> list[tuple[str, str]]:
        if self._query is None:
            self._query = parse_qsl(self.scope.get("query_string", b"").decode("latin-1"),
                                    keep_blank_values=True)
        return self._query

    @property
    def client(self) -> str:
        c = self.scope.get("client")
        return str(c[0]) if c else "-"

    async def stream(self) -> AsyncIterator[bytes]:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ConnectionAbortedError("client went away")
            body = message.get("body", b"")
            if body:
                yield body
            if not message.get("more_body", False):
                return

    async def read(self, limit: int) -> bytes | None:
        """The whole body, or None if it is longer than ``limit``."""
        parts = bytearray()
        async for chunk in self.stream():
            parts += chunk
            if len(parts) > limit:
                return None
        return bytes(parts)


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """(start, length) for a satisfiable single range; None to send everything; False
    for a range that starts past the end (416)."""
    if not header:
        return None
    m = _RANGE.fullmatch(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:                       # suffix: the last N bytes
        n = int(last)
        if n == 0:
            return False
        return max(0, size - n), min(n, size)
    start = int(first)
    if start >= size:
        return False
    end = min(int(last), size - 1) if last else size - 1
    if end < start:
        return None
    return start, end - start + 1


async def send_reply(reply: Reply, send: Any, head: bool) -> None:
    headers = [API_VERSION]
    has_length = False
    for k, v in reply.headers.items():
        lk = k.lower()
        has_length |= lk == "content-length"
        headers.append((lk.encode("latin-1"), v.encode("latin-1")))
    if not has_length:
        n = reply.file[2] if reply.file is not None else len(reply.body)
        headers.append((b"content-length", str(n).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    if head or reply.status in (204, 304):
        await send({"type": "http.response.body", "body": b""})
        return
    if reply.file is None:
        await send({"type": "http.response.body", "body": reply.body})
        return
    path, start, length = reply.file
    if length == 0:
        if not isinstance(path, str):
            path.close()
        await send({"type": "http.response.body", "body": b""})
        return
    if isinstance(path, str):
        fd = await anyio.to_thread.run_sync(os.open, path, os.O_RDONLY)
        pread: Callable[[int, int], bytes] = partial(os.pread, fd)
        close: Callable[[], None] = partial(os.close, fd)
    else:
        pread, close = path.pread, path.close
    try:
        left = length
        pos = start
        while left > 0:
            data = await anyio.to_thread.run_sync(pread, min(CHUNK, left), pos)
            if not data:     # the file shrank under us (cannot happen to a blob): stop
                break
            left -= len(data)
            pos += len(data)
            await send({"type": "http.response.body", "body": data, "more_body": left > 0})
        if left > 0:
            await send({"type": "http.response.body", "body": b""})
    finally:
        close()
