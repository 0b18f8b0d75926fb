"""HTTP/1.1 for the registry client, on the standard library's ``http.client``.

Why not httpx: importing it (with httpcore, h11, idna, cookiejar, urllib.request) cost
~0.1 s on every ``lamina pull``/``push`` — a third of the CLI's fixed cost — and its
transport layering copied every body piece once more.  This module is what the registry
client needs and no more:

- keep-alive connections pooled per (scheme, host, port), safe for parallel blobs; a
  pooled connection the server closed meanwhile is retried once on a fresh one when the
  body can be sent again (bytes, or a file);
- bodies as ``bytes``, an iterable of ``bytes`` (sent as they come, ``Content-Length``
  or chunked), or a ``FileBody``: a byte range of a file sent with ``sendfile(2)``, so a
  blob leaves the store without passing through Python;
- responses read with ``read1`` (whatever the socket has), so a dropped connection
  loses nothing already received (the caller resumes with ``Range``);
- redirects for GET/HEAD (registries send blob downloads to storage), dropping
  ``Authorization`` when the redirect leaves the origin (RFC 9110 §15.4: credentials
  belong to the origin that asked for them);
- proxies from ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY``/``NO_PROXY`` (absolute-form
  requests through an http proxy, a ``CONNECT`` tunnel for https), looked at only when
  such a variable is set (``urllib.request`` alone costs ~30 ms to import).

Failures raise ``WireError`` subclasses chained ``from`` the ``OSError`` underneath, so
callers can tell a refused connection or a TLS failure by the cause.  ``cancel`` (another
thread's Ctrl-C) shuts down the sockets in use, so reads blocked in them return at once,
and makes this and every later request raise ``Cancelled``, which no caller retries.
Nothing here knows about registries: status codes are the caller's business.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import socket
import ssl
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO
from urllib.parse import unquote, urlencode, urljoin, urlsplit

READ_SIZE = 1 << 20          # most a body read returns at once
SENDFILE_SLICE = 8 << 20     # a FileBody is sent in slices this big (progress between)
MAX_REDIRECTS = 5
USER_AGENT = "lamina/0.1"


class WireError(Exception):
    """The request did not get an answer (or the answer's body broke off)."""


class Cancelled(KeyboardInterrupt):
    """The client was cancelled (Ctrl-C, as a worker thread sees it): the request
    stopped and is not to be retried.  A KeyboardInterrupt, so that no handler of
    errors takes it for one."""


class ConnectError(WireError):
    pass


class ConnectTimeout(ConnectError):
    pass


class ReadError(WireError):
    """The connection broke (or timed out) while waiting for or reading the answer."""


class WriteError(WireError):
    pass


@dataclass
class FileBody:
    """``size`` bytes of ``file`` from ``offset``, sent with ``sendfile``.  ``progress``
    (bytes sent so far) is called between slices."""

    file: IO[bytes]
    size: int
    offset: int = 0
    progress: Callable[[int], None] | None = None


Body = bytes | Iterable[bytes] | FileBody | None


def with_params(url: str, params: dict[str, str] | list[tuple[str, str]] | None) -> str:
    """``url`` with ``params`` added to its query (repeated keys allowed in a list)."""
    if not params:
        return url
    return url + ("&" if "?" in url else "?") + urlencode(params)


class Response:
    """An answer whose body is read on demand; ``close`` it (reading to the end returns
    the connection to the pool)."""

    def __init__(self, client: HttpClient, key: tuple[str, str, int] | None,
                 conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
                 method: str, url: str) -> None:
        self._client = client
        self._key = key
        self._conn: http.client.HTTPConnection | None = conn
        self._resp = resp
        self.method = method
        self.url = url
        self.status_code = resp.status
        self.reason = resp.reason
        headers: dict[str, str] = {}
        for name, value in resp.getheaders():
            k = name.lower()
            # Repeated fields join with ", " (RFC 9110 §5.3), as WWW-Authenticate needs.
            headers[k] = f"{headers[k]}, {value}" if k in headers else value
        self.headers = headers
        self.received = 0
        if method == "HEAD" or resp.length == 0:
            self._finished()

    def join(self, ref: str) -> str:
        """``ref`` (a Location, a Link) resolved against this response's URL."""
        return urljoin(self.url, ref)

    def read1(self, n: int = READ_SIZE) -> bytes:
        """Up to ``n`` bytes, as soon as any have arrived; b"" at the end of the body.
        Raises ReadError if the connection breaks or the body ends short."""
        if self._conn is None or n == 0:
            return b""
        try:
            data = self._resp.read1(n)
        except (OSError, http.client.HTTPException) as e:
            self._client.check_cancelled()
            raise self._read_error(e) from e
        if data:
            self.received += len(data)
            return data
        self._at_end()
        return b""

    def readinto1(self, buf: memoryview) -> int:
        """``read1`` into ``buf`` (no new bytes object per piece): at most one socket
        read; 0 at the end of the body."""
        if self._conn is None or not len(buf):
            return 0
        resp = self._resp
        if resp.chunked or resp.length is None or resp.fp is None:
            data = self.read1(len(buf))   # http.client decodes the framing
            buf[:len(data)] = data
            return len(data)
        want = min(len(buf), resp.length)
        n = 0
        if want:
            # A Content-Length body straight from http.client's buffered socket file,
            # keeping its count of what is left (HTTPResponse.length) as read1 does.
            try:
                n = resp.fp.readinto1(buf[:want])
            except (OSError, http.client.HTTPException) as e:
                self._client.check_cancelled()
                raise self._read_error(e) from e
        if n:
            resp.length -= n
            self.received += n
            return n
        self._at_end()
        return 0

    def _read_error(self, e: OSError | http.client.HTTPException) -> ReadError:
        if isinstance(e, http.client.IncompleteRead):
            return ReadError("peer closed connection without sending complete message "
                             f"body (received {self.received + len(e.partial)} bytes)")
        if isinstance(e, TimeoutError):
            return ReadError(str(e) or "read timed out")
        return ReadError(str(e) or type(e).__name__)

    def _at_end(self) -> None:
        """The body gave no more bytes: done, or cut short (http.client does not say)."""
        if self._resp.length:
            expected = self.received + self._resp.length
            self.close()
            self._client.check_cancelled()   # the socket was shut down under the read
            raise ReadError("peer closed connection without sending complete message body "
                            f"(received {self.received} bytes, expected {expected})")
        self._finished()

    def iter_bytes(self) -> Iterator[bytes]:
        while data := self.read1():
            yield data

    def read(self) -> bytes:
        return b"".join(self.iter_bytes())

    def _finished(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        will_close = self._resp.will_close
        self._resp.close()
        if will_close or self._key is None:
            conn.close()
        else:
            self._client._checkin(self._key, conn)

    def close(self) -> None:
        """Closed before the end: the connection cannot be reused."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._resp.close()
            conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _proxy_for(scheme: str, host: str) -> str | None:
    """The proxy URL the environment asks for ``scheme://host``, or None.  Cheap when no
    proxy variable is set, which is the common case."""
    if not any(k.lower().endswith("_proxy") for k in os.environ):
        return None
    import urllib.request

    if urllib.request.proxy_bypass_environment(host):  # type: ignore[attr-defined]
        return None
    proxies = urllib.request.getproxies_environment()
    return proxies.get(scheme) or proxies.get("all")


class HttpClient:
    """HTTP/1.1 with keep-alive connections pooled per (scheme, host, port); thread-safe.

    ``ssl_context``: for https (default: the system's trust store, made on first use);
    ``timeout``: seconds for connecting and for each read or write."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, timeout: float = 60.0,
                 pool_size: int = 10, headers: dict[str, str] | None = None) -> None:
        self._ssl = ssl_context
        self.timeout = timeout
        self._pool_size = pool_size
        self._headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self.connections = 0   # opened so far (tests check reuse)
        self.cancelled = False
        self._opened: weakref.WeakSet[http.client.HTTPConnection] = weakref.WeakSet()

    # -- the pool ----------------------------------------------------------------------
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

    def _context(self) -> ssl.SSLContext:
        with self._lock:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            return self._ssl

    def _connect(self, scheme: str, host: str, port: int, proxy: str | None
                 ) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if proxy is not None:
            p = urlsplit(proxy if "://" in proxy else "http://" + proxy)
            p_port = p.port or (443 if p.scheme == "https" else 80)
            if scheme == "https":
                conn = http.client.HTTPSConnection(p.hostname or "", p_port,
                                                   timeout=self.timeout,
                                                   context=self._context())
                conn.set_tunnel(host, port, headers=_proxy_auth(proxy))
            else:
                conn = http.client.HTTPConnection(p.hostname or "", p_port,
                                                  timeout=self.timeout)
        elif scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                               context=self._context())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        try:
            conn.connect()
        except TimeoutError as e:
            conn.close()
            raise ConnectTimeout(str(e) or "connect timed out") from e
        except OSError as e:   # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            conn.close()
            raise ConnectError(str(e) or type(e).__name__) from e
        if conn.sock is not None:
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self.connections += 1
            self._opened.add(conn)
        if self.cancelled:   # cancelled while connecting: cancel() did not see this one
            conn.close()
            raise Cancelled("cancelled")
        return conn

    def check_cancelled(self) -> None:
        if self.cancelled:
            raise Cancelled("cancelled")

    def cancel(self) -> None:
        """Stop every request, from another thread: reads and writes blocked in a socket
        return at once (the socket is shut down under them) and raise ``Cancelled``, and
        so does every request made from now on."""
        self.cancelled = True
        with self._lock:
            conns = list(self._opened)
        for conn in conns:
            sock = conn.sock
            if sock is not None:
                # The plain socket's shutdown, also under TLS: SSLSocket.shutdown would
                # unwrap the TLS object another thread is reading through.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    # -- requests ----------------------------------------------------------------------
    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                body: Body = None, follow_redirects: bool = False) -> Response:
        """Send one request; the response's body is left to read.  GET/HEAD redirects
        are followed when asked (up to ``MAX_REDIRECTS``)."""
        hdrs = {**self._headers, **(headers or {})}
        for _ in range(MAX_REDIRECTS + 1):
            resp = self._send(method, url, hdrs, body)
            if not (follow_redirects and method in ("GET", "HEAD")
                    and resp.status_code in (301, 302, 303, 307, 308)
                    and resp.headers.get("location")):
                return resp
            target = resp.join(resp.headers["location"])
            resp.close()
            if _origin(target) != _origin(url):
                hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
            url = target
        raise ReadError(f"more than {MAX_REDIRECTS} redirects from {url}")

    def _send(self, method: str, url: str, headers: dict[str, str], body: Body) -> Response:
        self.check_cancelled()
        parts = urlsplit(url)
        scheme = parts.scheme
        if scheme not in ("http", "https") or not parts.hostname:
            raise ConnectError(f"unsupported URL {url!r}")
        host = parts.hostname
        port = parts.port or (443 if scheme == "https" else 80)
        proxy = _proxy_for(scheme, host)
        key = (scheme, host, port) if proxy is None else None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if proxy is not None and scheme == "http":
            target = url.split("#", 1)[0]    # absolute-form through an http proxy
            headers = {**_proxy_auth(proxy), **headers}
        replayable = body is None or isinstance(body, bytes | FileBody)
        for fresh in (False, True):
            conn = None if fresh or key is None else self._checkout(key)
            reused = conn is not None
            if conn is None:
                conn = self._connect(scheme, host, port, proxy)
            if conn.sock is not None:
                conn.sock.settimeout(self.timeout)
            try:
                self._write(conn, method, target, parts.netloc, headers, body)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    ConnectionAbortedError, ssl.SSLEOFError, ssl.SSLZeroReturnError) as e:
                conn.close()
                self.check_cancelled()
                if reused and replayable:
                    continue   # a stale keep-alive connection: once more on a new one
                raise ReadError(str(e) or type(e).__name__) from e
            except TimeoutError as e:
                conn.close()
                raise ReadError(str(e) or "timed out") from e
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self.check_cancelled()
                raise WriteError(str(e) or type(e).__name__) from e
            except BaseException:
                conn.close()   # the body's own error (e.g. IntegrityError): pass it on
                raise
            return Response(self, key, conn, resp, method, url)
        raise AssertionError("unreachable")

    @staticmethod
    def _write(conn: http.client.HTTPConnection, method: str, target: str, netloc: str,
               headers: dict[str, str], body: Body) -> None:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", netloc)
        lower = {k.lower() for k in headers}
        for name, value in headers.items():
            conn.putheader(name, value)
        chunked = False
        if isinstance(body, bytes):
            if "content-length" not in lower:
                conn.putheader("Content-Length", str(len(body)))
        elif isinstance(body, FileBody):
            if "content-length" not in lower:
                conn.putheader("Content-Length", str(body.size))
        elif body is not None and "content-length" not in lower:
            chunked = True
            conn.putheader("Transfer-Encoding", "chunked")
        elif body is None and method in ("POST", "PUT", "PATCH") \
                and "content-length" not in lower:
            conn.putheader("Content-Length", "0")
        conn.endheaders()
        if body is None:
            return
        if isinstance(body, bytes):
            if body:
                conn.send(body)
            return
        if isinstance(body, FileBody):
            _sendfile(conn, body)
            return
        for piece in body:
            if not piece:
                continue
            if chunked:
                conn.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
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

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sendfile(conn: http.client.HTTPConnection, body: FileBody) -> None:
    sock = conn.sock
    assert sock is not None
    sent = 0
    progress = body.progress
    while sent < body.size:
        count = min(SENDFILE_SLICE, body.size - sent)
        # socket.sendfile uses os.sendfile on a plain socket and falls back to
        # read+send over TLS; either way it stops short only at end of file.  The
        # fallback seeks only for a non-zero offset, so a body sent again (a retry)
        # would start where the last attempt stopped: seek every time.
        body.file.seek(body.offset + sent)
        n = sock.sendfile(body.file, body.offset + sent, count)
        if n <= 0:
            raise WriteError(f"the file ended after {sent} of {body.size} bytes")
        sent += n
        if progress is not None:
            progress(sent)


def _proxy_auth(proxy: str) -> dict[str, str]:
    """``Proxy-Authorization`` for a proxy URL with credentials (``http://u:p@host``)."""
    p = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    if p.username is None:
        return {}
    raw = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
    return {"Proxy-Authorization": "Basic " + base64.b64encode(raw).decode()}


def _origin(url: str) -> tuple[str, str, int | None]:
    p = urlsplit(url)
    return p.scheme, (p.hostname or "").lower(), p.port
