"""``lamina serve``: the registry on uvicorn (uvloop and httptools when installed).

Access log lines go to stdout (uvicorn's access logger), everything else to stderr.
SIGINT/SIGTERM stop accepting connections and let requests in flight — an upload's
PATCH or PUT — finish (up to ``GRACE`` seconds) before the store is closed; the process
then exits 0.  Upload sessions not finished stay resumable from their rows.
Connections are timed out and capped by ``connections.GuardedHttp`` (``[server]`` keys
``header_timeout``, ``body_timeout``, ``idle_timeout``, ``max_connections``).
"""

from __future__ import annotations

import contextlib
import logging
import resource
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace

import uvicorn

from lamina.errors import InvalidInput
from lamina.server.app import create_app
from lamina.server.config import ServerConfig
from lamina.server.connections import protocol_class
from lamina.store.store import Store

GRACE = 30
FDS_PER_CONNECTION = 2      # its socket and the blob file it reads or writes
FDS_SPARE = 64              # the store's databases, the listening socket, logs

log = logging.getLogger("lamina.server")


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
    logging.getLogger("lamina.server").setLevel(opts.log_level.upper())
    cfg = replace(cfg, connections=replace(
        cfg.connections, max_connections=fit_fd_limit(cfg.connections.max_connections)))
    app = create_app(store, cfg, own_store=True)
    config = uvicorn.Config(
        app, host=cfg.host, port=cfg.port, lifespan="on", log_level=opts.log_level,
        access_log=opts.access_log, server_header=False, proxy_headers=False,
        ssl_certfile=str(cfg.tls_cert) if cfg.tls_cert else None,
        ssl_keyfile=str(cfg.tls_key) if cfg.tls_key else None,
        timeout_graceful_shutdown=GRACE, http=protocol_class(cfg.connections),
        timeout_keep_alive=cfg.connections.idle_timeout,
        ws="none",      # no WebSocket routes; an upgrade would leave the connection guard
    )
    _Server(config).run()


def fit_fd_limit(max_connections: int) -> int:
    """Make room for ``max_connections`` in the process's file descriptors: raise the soft
    RLIMIT_NOFILE towards the hard one (as Go's runtime does at start); when the hard
    limit is too low, serve fewer connections rather than fail accept() with EMFILE."""
    want = FDS_PER_CONNECTION * max_connections + FDS_SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return max_connections
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    fit = max(1, (soft - FDS_SPARE) // FDS_PER_CONNECTION)
    if fit < max_connections:
        log.warning("max_connections lowered from %d to %d: the open files limit is %d",
                    max_connections, fit, soft)
    return min(fit, max_connections)
