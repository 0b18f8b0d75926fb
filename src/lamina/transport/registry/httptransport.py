"""An httpx transport over the standard library's ``http.client``, for speed.

Why: pulling a 240 MB image from a loopback registry, httpx's default transport
(httpcore + h11) spends ~0.3 s more than ``http.client`` moving the same bytes — h11
parses and re-buffers every 64 KiB piece in Python.  This transport keeps httpx as the
one seam (auth, redirects, timeouts, tests hand in their own ``httpx.Client``) and lets
``http.client`` do the byte moving: bodies are read with ``read1`` (whatever the socket
has, up to 1 MiB, so a dropped connection loses nothing already received) and sent
as they come from the request stream.

What it does not do: proxies (``make_http_client`` uses httpx's own transport when a
proxy is configured in the environment), HTTP/2.  Errors are mapped onto httpx's
exception classes, each raised ``from`` the original (so callers can tell a refused
connection or a TLS failure by the cause).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import httpx

READ_SIZE = 1 << 20


def _timeouts(request: httpx.Request) -> tuple[float | None, float | None]:
    t: dict[str, Any] = request.extensions.get("timeout", {})
    return t.get("connect"), t.get("read")


class _Body(httpx.SyncByteStream):
    def __init__(self, transport: StdlibTransport, key: tuple[str, str, int],
                 conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        self._transport = transport
        self._key = key
        self._conn: http.client.HTTPConnection | None = conn
        self._resp = resp

    def __iter__(self) -> Iterator[bytes]:
        resp = self._resp
        received = 0
        try:
            while True:
                data = resp.read1(READ_SIZE)
                if not data:
                    break
                received += len(data)
                yield data
        except http.client.IncompleteRead as e:
            raise httpx.RemoteProtocolError(
                f"peer closed connection without sending complete message body "
                f"(received {received + len(e.partial)} bytes)") from e
        except TimeoutError as e:
            raise httpx.ReadTimeout(str(e) or "read timed out") from e
        except (OSError, http.client.HTTPException) as e:
            raise httpx.ReadError(str(e) or type(e).__name__) from e
        if resp.length:   # Content-Length not reached: http.client itself does not say
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body "
                f"(received {received} bytes, expected {received + resp.length})")
        self._finished()

    def _finished(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        will_close = self._resp.will_close
        self._resp.close()
        if will_close:
            conn.close()
        else:
            self._transport._checkin(self._key, conn)

    def close(self) -> None:
        """Closed before the end: the connection cannot be reused."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._resp.close()
            conn.close()


class StdlibTransport(httpx.BaseTransport):
    """HTTP/1.1 with keep-alive connections pooled per (scheme, host, port)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, pool_size: int = 10) -> None:
        self._ssl = ssl_context
        self._pool_size = pool_size
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def _checkout(self, key: tuple[str, str, int]) -> http.client.HTTPConnection | None:
        with self._lock:
            idle = self._idle.get(key)
            while idle:
                conn = idle.pop()
                if conn.sock is not None:
                    return conn
        return None

    def _checkin(self, key: tuple[str, str, int], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self._pool_size:
                idle.append(conn)
                return
        conn.close()

    def _connect(self, key: tuple[str, str, int], connect_timeout: float | None
                 ) -> http.client.HTTPConnection:
        scheme, host, port = key
        conn: http.client.HTTPConnection
        if scheme == "https":
            ctx = self._ssl if self._ssl is not None else ssl.create_default_context()
            conn = http.client.HTTPSConnection(host, port, timeout=connect_timeout,
                                               context=ctx)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=connect_timeout)
        try:
            conn.connect()
        except TimeoutError as e:
            conn.close()
            raise httpx.ConnectTimeout(str(e) or "connect timed out") from e
        except OSError as e:   # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            conn.close()
            raise httpx.ConnectError(str(e) or type(e).__name__) from e
        if conn.sock is not None:
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        port = url.port or (443 if scheme == "https" else 80)
        key = (scheme, url.host, port)
        connect_timeout, read_timeout = _timeouts(request)
        # A body given as bytes can be sent again if a pooled connection turns out to
        # have been closed by the server meanwhile; a streamed body cannot.
        replayable = isinstance(request.stream, httpx.ByteStream)
        for fresh in (False, True):
            conn = None if fresh else self._checkout(key)
            reused = conn is not None
            if conn is None:
                conn = self._connect(key, connect_timeout)
            if conn.sock is not None:
                conn.sock.settimeout(read_timeout)
            try:
                self._send(conn, request)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError) as e:
                conn.close()
                if reused and replayable:
                    continue   # a stale keep-alive connection: once more on a new one
                raise httpx.RemoteProtocolError(str(e) or type(e).__name__) from e
            except TimeoutError as e:
                conn.close()
                raise httpx.ReadTimeout(str(e) or "timed out") from e
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise httpx.WriteError(str(e) or type(e).__name__) from e
            except BaseException:
                conn.close()   # the body's own error (e.g. IntegrityError): pass it on
                raise
            return httpx.Response(
                resp.status, headers=resp.getheaders(), stream=_Body(self, key, conn, resp),
                extensions={"http_version": b"HTTP/1.1",
                            "reason_phrase": resp.reason.encode("latin-1", "replace")})
        raise AssertionError("unreachable")

    @staticmethod
    def _send(conn: http.client.HTTPConnection, request: httpx.Request) -> None:
        target = request.url.raw_path.decode("ascii")
        conn.putrequest(request.method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in request.headers.raw:
            conn.putheader(name.decode("latin-1"), value)
        conn.endheaders()
        chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
        for piece in request.stream:  # type: ignore[union-attr]
            if not piece:
                continue
            if chunked:
                conn.send(b"%x\r\n" % len(piece))
                conn.send(piece)
                conn.send(b"\r\n")
            else:
                conn.send(piece)
        if chunked:
            conn.send(b"0\r\n\r\n")

    def close(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()
