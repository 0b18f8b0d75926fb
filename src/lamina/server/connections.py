"""Slow clients and too many of them: the connection limits of ``lamina serve``.

uvicorn times out only a keep-alive connection idle after a response.  A client that
connects and sends half a request line, or a body that stops flowing, or never reads
its response, would hold its connection — a file descriptor, a task — forever
(slowloris), and uvicorn's ``limit_concurrency`` only turns *requests* away, once their
heads are complete, so stalled heads fill the server regardless.
``GuardedHttp`` is uvicorn's httptools protocol (given to ``uvicorn.Config(http=…)``,
no uvicorn internals replaced) that reports the parser's events to a ``Guard``, which
applies the four limits of ``config.Connections`` — nginx's, which has the same knobs:

- ``header_timeout``: a request's line and headers must be complete within this many
  seconds of the connection opening, or of the request's first byte on a kept-alive
  connection.  One deadline for the whole head, so trickling a byte at a time does not
  extend it (nginx ``client_header_timeout``; Go's ``ReadHeaderTimeout``).
- ``body_timeout``: a request body, or a response the client is reading, may move no
  byte for at most this long — between two reads, not for the whole body, so a big
  upload that keeps flowing is never cut (nginx ``client_body_timeout``,
  ``send_timeout``).  Time the server itself stops reading (flow control while the app
  is busy, an ``Expect: 100-continue`` not yet answered) does not count.
- ``idle_timeout``: between requests on a kept-alive connection (uvicorn's own
  ``timeout_keep_alive``; nginx ``keepalive_timeout``).
- ``max_connections``: a new connection beyond it closes the connection that has waited
  longest for its client's next request head — idle between requests, or a head still not
  complete.  nginx likewise closes idle kept-alive connections when it runs out
  (``ngx_drain_connections``); lamina counts incomplete heads as idle too, since a real
  client sends its head at once: so stalled heads cannot lock anyone out even before
  their ``header_timeout``.  When every connection is mid-request (a body arriving, a
  response on its way), the new one gets 503 and is closed, as nginx's ``limit_conn``.

A cut request is an ordinary disconnect to the app: an upload keeps what arrived and
stays resumable.  With TLS a connection reaches the protocol once its handshake is done:
until then asyncio's handshake timeout (60 s) bounds it, and it is not counted.

One sweep every second (a quarter of the shortest timeout when that is shorter) checks
every connection, so the hot path (a manifest HEAD) pays a few attribute stores and no
timer of its own; a limit is enforced up to two sweeps late, never early.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from lamina.server.config import Connections

log = logging.getLogger("lamina.server")

_BUSY_BODY = b"too many connections\n"
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
         b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n%s"
         % (len(_BUSY_BODY), _BUSY_BODY))
NOTE_EVERY = 10.0       # seconds between two log lines about the same limit


class GuardedHttp(HttpToolsProtocol):
    """One connection: what it is waiting for, since when.  Subclassed per server with
    its ``guard`` (``protocol_class``).  The parser callbacks run for every request, so
    they call the base class by name (a ``super()`` call costs ~0.3 µs, five a request)
    and take the time from the guard's clock, not the loop's."""

    guard: ClassVar[Guard]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        now = self.loop.time()
        self.head_since: float | None = now     # a request head awaited or incomplete
        self.waiting_since: float | None = now  # no request in flight (closing order)
        self.in_flight = 0                      # heads complete, responses not
        self.in_body = False
        self.received = 0                       # body bytes, ever
        self.progress = (0, now)                # (received, when) at the last move
        self.write_stalled: float | None = None
        self.guard.admit(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        super().connection_lost(exc)

    def on_body(self, body: bytes) -> None:
        self.received += len(body)
        HttpToolsProtocol.on_body(self, body)

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        if self.head_since is None:
            self.head_since = self.guard.clock

    def on_headers_complete(self) -> None:
        self.head_since = self.waiting_since = None
        self.in_flight += 1
        self.in_body = True
        self.progress = (self.received, self.guard.clock)
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        self.in_body = False
        HttpToolsProtocol.on_message_complete(self)

    def on_response_complete(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self.waiting_since = self.guard.clock
        HttpToolsProtocol.on_response_complete(self)

    def pause_writing(self) -> None:
        self.write_stalled = self.loop.time()
        HttpToolsProtocol.pause_writing(self)

    def resume_writing(self) -> None:
        self.write_stalled = None
        HttpToolsProtocol.resume_writing(self)

    def overdue(self, now: float, limits: Connections, slack: float) -> str | None:
        """Why this connection must be closed now, if it must (``slack``: how much older
        than the event the guard's clock may be)."""
        if self.head_since is not None:
            if not self.transport.is_reading():
                self.head_since = now   # a pipelined head waits for the one before it
            elif now - self.head_since > limits.header_timeout + slack:
                return f"request head not complete within {limits.header_timeout:g} s"
        # paused from the transport's high-water mark until it drains to its low one: the
        # client read nothing (or under ~48 KiB, uvloop's marks) for body_timeout
        if self.write_stalled is not None and now - self.write_stalled > limits.body_timeout:
            return f"response not read for {limits.body_timeout:g} s"
        if not self.in_body:
            return None
        if (self.received != self.progress[0] or not self.transport.is_reading()
                # uvicorn answers "100 Continue" when the app first reads the body
                or getattr(self.cycle, "waiting_for_100_continue", False)):
            # moving, or the server is the one not reading: the clock restarts
            self.progress = (self.received, now)
        elif now - self.progress[1] > limits.body_timeout + slack:
            return f"request body stalled for {limits.body_timeout:g} s"
        return None


class Guard:
    """The open connections of one server and the sweep that times them out."""

    def __init__(self, limits: Connections) -> None:
        self.limits = limits
        self.open: set[GuardedHttp] = set()
        self.tick = min(1.0, limits.header_timeout / 4, limits.body_timeout / 4)
        self._sweeping: asyncio.TimerHandle | None = None
        # the time of the last sweep or connection: stamps on the hot path read this
        # instead of calling loop.time(), and are at most a tick early for it
        self.clock = 0.0
        self._noted: dict[str, tuple[float, int]] = {}   # reason → (last logged, since)

    def admit(self, conn: GuardedHttp) -> None:
        self.clock = conn.loop.time()
        if len(self.open) >= self.limits.max_connections:
            idle = [c for c in self.open if c.waiting_since is not None and not c.in_body]
            if not idle:
                self._note(conn, "connection refused: max_connections "
                           f"({self.limits.max_connections}) all busy")
                conn.transport.write(_BUSY)
                conn.transport.close()
                return
            self._drop(min(idle, key=lambda c: c.waiting_since or 0.0),
                       "idle connection closed to make room (max_connections)")
        self.open.add(conn)
        if self._sweeping is None:
            self._sweeping = conn.loop.call_later(self.tick, self._sweep, conn.loop)

    def forget(self, conn: GuardedHttp) -> None:
        self.open.discard(conn)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = self.clock = loop.time()
        for conn in list(self.open):
            why = conn.overdue(now, self.limits, self.tick)
            if why is not None:
                self._drop(conn, why)
        self._sweeping = loop.call_later(self.tick, self._sweep, loop) if self.open else None

    def _drop(self, conn: GuardedHttp, why: str) -> None:
        self.open.discard(conn)
        conn.transport.close()      # the app sees a disconnect, as if the client left
        self._note(conn, why)

    def _note(self, conn: GuardedHttp, why: str) -> None:
        """Log ``why`` at most every NOTE_EVERY seconds, with how often it happened:
        under attack one line per connection would flood the log."""
        now = conn.loop.time()
        last, count = self._noted.get(why, (-NOTE_EVERY, 0))
        count += 1
        if now - last >= NOTE_EVERY:
            client = f"{conn.client[0]}:{conn.client[1]}" if conn.client else "a client"
            log.warning("%s: %s%s", client, why,
                        f" ({count} times since the last such line)" if count > 1 else "")
            self._noted[why] = (now, 0)
        else:
            self._noted[why] = (last, count)


def protocol_class(limits: Connections) -> type[GuardedHttp]:
    """A ``GuardedHttp`` for one server (its own ``Guard``), for ``uvicorn.Config(http=…)``."""

    class Protocol(GuardedHttp):
        guard = Guard(limits)

    return Protocol
