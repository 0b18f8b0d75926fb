"""A TCP proxy that behaves like a slower link: each direction paced to ``rate`` bits/s
(one token bucket per direction, shared by every connection, as one access link is) and
delayed by half of ``rtt``.  Runs an asyncio loop on a thread of the benchmark's process;
counts the bytes it carries each way.

    with LinkProxy("127.0.0.1", 5000, rate_mbit=100, rtt_ms=20) as proxy:
        ... clients talk to 127.0.0.1:proxy.port ...
        proxy.down   # bytes server -> clients so far
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from types import TracebackType

_READ = 16 << 10
_BURST = 64 << 10   # bytes a direction may send back to back after idling (a NIC's queue)


class _Pacer:
    """A serial link: ``take(n)`` returns once the link has had time to send ``n`` bytes
    after everything taken before (a virtual clock, no busy loop)."""

    def __init__(self, bytes_per_s: float) -> None:
        self.rate = bytes_per_s
        self.free_at = 0.0

    async def take(self, n: int) -> None:
        now = time.monotonic()
        start = max(now - _BURST / self.rate, self.free_at)
        self.free_at = start + n / self.rate
        if self.free_at > now:
            await asyncio.sleep(self.free_at - now)


class LinkProxy:
    def __init__(self, host: str, port: int, rate_mbit: float, rtt_ms: float = 0.0) -> None:
        self.target = (host, port)
        self.rate = rate_mbit * 1e6 / 8
        self.delay = rtt_ms / 2000
        self.port = 0
        self.down = 0
        self.up = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> LinkProxy:
        self._thread.start()
        self._ready.wait(5)
        if not self.port:
            raise SystemExit("the link proxy did not start")
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        pacers = (_Pacer(self.rate), _Pacer(self.rate))

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       pacer: _Pacer, downstream: bool) -> None:
            # Paced on the way in, delivered `delay` later: the bytes in flight are the
            # link's bandwidth-delay product, as on a real path.
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

            async def deliver() -> None:
                while True:
                    at, data = await queue.get()
                    if not data:
                        break
                    wait = at - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    writer.write(data)
                    await writer.drain()
                writer.close()

            sender = asyncio.ensure_future(deliver())
            try:
                while data := await reader.read(_READ):
                    await pacer.take(len(data))
                    if downstream:
                        self.down += len(data)
                    else:
                        self.up += len(data)
                    queue.put_nowait((time.monotonic() + self.delay, data))
            except OSError:
                pass
            queue.put_nowait((0.0, b""))
            with contextlib.suppress(OSError):
                await sender

        async def handle(creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
            try:
                sreader, swriter = await asyncio.open_connection(*self.target)
            except OSError:
                cwriter.close()
                return
            await asyncio.gather(pump(creader, swriter, pacers[0], False),
                                 pump(sreader, cwriter, pacers[1], True))

        async def start() -> None:
            self._server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = int(self._server.sockets[0].getsockname()[1])
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()
        if self._server is not None:
            self._server.close()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()
