"""``lamina serve``: the registry on uvicorn (uvloop and httptools when installed).

Access log lines go to stdout (uvicorn's access logger), everything else to stderr.
SIGINT/SIGTERM stop accepting connections and let requests in flight — an upload's
PATCH or PUT — finish (up to ``GRACE`` seconds) before the store is closed; the process
then exits 0.  Upload sessions not finished stay resumable from their rows.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from lamina.errors import InvalidInput
from lamina.server.app import create_app
from lamina.server.config import ServerConfig
from lamina.store.store import Store

GRACE = 30


@dataclass(frozen=True)
class ServeOptions:
    log_level: str = "info"
    access_log: bool = True


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGINT/SIGTERM once it has shut down gracefully, so the process
    would die by the signal; lamina exits 0 after a clean shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)


def serve(store: Store, cfg: ServerConfig, opts: ServeOptions = ServeOptions()) -> None:
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise InvalidInput("TLS needs both --tls-cert and --tls-key")
    for f in (cfg.tls_cert, cfg.tls_key):
        if f is not None and not f.is_file():
            raise InvalidInput(f"TLS file {f} does not exist")
    app = create_app(store, cfg, own_store=True)
    logging.getLogger("lamina.server").setLevel(opts.log_level.upper())
    config = uvicorn.Config(
        app, host=cfg.host, port=cfg.port, lifespan="on", log_level=opts.log_level,
        access_log=opts.access_log, server_header=False, proxy_headers=False,
        ssl_certfile=str(cfg.tls_cert) if cfg.tls_cert else None,
        ssl_keyfile=str(cfg.tls_key) if cfg.tls_key else None,
        timeout_graceful_shutdown=GRACE,
    )
    _Server(config).run()
