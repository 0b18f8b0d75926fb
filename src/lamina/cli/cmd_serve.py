"""``lamina serve``: parse, build a ``ServerConfig``, call ``lamina.server.run.serve``;
``lamina serve gc``: the registry's online gc (``lamina.server.gc.run``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from lamina.store.store import Store

_HELP = {
    "root": "Store to serve (default: lamina's store).",
    "addr": "HOST:PORT to listen on (default 127.0.0.1:5000).",
    "config": "TOML file: auth, access rules, limits, timeouts.",
    "tls_cert": "PEM certificate: serve https.",
    "tls_key": "PEM private key for --tls-cert.",
    "log_level": "debug, info, warning or error.",
    "no_access_log": "Do not log each request.",
    "header_timeout": "Seconds a client has to send a request's headers (default 30).",
    "body_timeout": "Seconds a request or response body may stall (default 60).",
    "idle_timeout": "Seconds a kept-alive connection may wait between requests (default 75).",
    "max_connections": "Open connections at most (default 1024).",
}
_DOC = "Serve the store as an OCI registry (distribution-spec 1.1)."


def _serve(store_factory: Callable[[], Store], root: Path | None, addr: str | None,
           config: Path | None, tls_cert: Path | None, tls_key: Path | None,
           log_level: str, no_access_log: bool, **connections: Any) -> None:
    from lamina.errors import InvalidInput
    from lamina.server.config import load_config, parse_addr
    from lamina.server.run import ServeOptions, serve

    if log_level not in ("debug", "info", "warning", "error"):
        raise InvalidInput(f"unknown log level {log_level!r}")
    cfg = load_config(config)
    if addr is not None:
        host, port = parse_addr(addr)
        cfg = replace(cfg, host=host, port=port)
    if tls_cert is not None or tls_key is not None:
        cfg = replace(cfg, tls_cert=tls_cert, tls_key=tls_key)
    given = {k: v for k, v in connections.items() if v is not None}
    if given:
        cfg = replace(cfg, connections=replace(cfg.connections, **given))
    store = Store(root) if root is not None else store_factory()
    serve(store, cfg, ServeOptions(log_level=log_level, access_log=not no_access_log))


def register(app: Any, store_factory: Callable[[], Store]) -> None:
    _register_click(app, store_factory)


def _register_click(app: click.Group, store_factory: Callable[[], Store]) -> None:
    from lamina.cli.format import Group, Opt, flag, option

    def ranged(name: str, kind: click.ParamType[Any], label: str) -> Callable[[Any], Any]:
        # lamina's option rows (``<float>``), with click's range check of the value
        return click.option(name, cls=Opt, type=kind, label=label,
                            help=_HELP[name.removeprefix("--").replace("-", "_")])

    @app.group(cls=Group, help=_DOC, invoke_without_command=True)
    @option("--root", kind=Path, help=_HELP["root"])
    @option("--addr", help=_HELP["addr"])
    @option("--config", kind=Path, help=_HELP["config"])
    @option("--tls-cert", kind=Path, help=_HELP["tls_cert"])
    @option("--tls-key", kind=Path, help=_HELP["tls_key"])
    @option("--log-level", default="info", show_default=True, help=_HELP["log_level"])
    @flag("--no-access-log", help=_HELP["no_access_log"])
    @ranged("--header-timeout", click.FloatRange(0, min_open=True), "seconds")
    @ranged("--body-timeout", click.FloatRange(0, min_open=True), "seconds")
    @ranged("--idle-timeout", click.IntRange(1), "seconds")
    @ranged("--max-connections", click.IntRange(1), "int")
    @click.pass_context
    def serve(ctx: click.Context, /, root: Path | None, addr: str | None, config: Path | None,
              tls_cert: Path | None, tls_key: Path | None, log_level: str,
              no_access_log: bool, **connections: Any) -> None:
        if ctx.invoked_subcommand is None:
            _serve(store_factory, root, addr, config, tls_cert, tls_key, log_level,
                   no_access_log, **connections)

    @serve.command("gc")
    @option("--root", kind=Path, help=_HELP["root"])
    @option("--config", kind=Path, help="The serve TOML file (its [metadata] section).")
    @flag("--dry-run", help="Say what would be removed; remove nothing.")
    @flag("--json", "json_", help="Print JSON.")
    def serve_gc(root: Path | None, config: Path | None, dry_run: bool, json_: bool) -> None:
        """Remove blobs no manifest of the registry reaches, while it serves (every
        replica keeps taking pushes: what they are about to reference is leased)."""
        from lamina.cli.format import human_size, print_json, say
        from lamina.server.app import open_metadata
        from lamina.server.config import load_config
        from lamina.server.gc import run
        from lamina.server.storage import open_storage

        cfg = load_config(config)
        store = Store(root) if root is not None else store_factory()
        try:
            db = open_metadata(store, cfg)
            try:
                storage = open_storage(cfg.storage, store, shared=db.shared)
                try:
                    report = run(store, storage, db, cfg.metadata.lease_ttl,
                                 dry_run=dry_run)
                finally:
                    storage.close()
            finally:
                db.close()
        finally:
            store.close()
        if json_:
            print_json({"blobs_removed": report.blobs_removed,
                        "bytes_freed": report.bytes_freed,
                        "replicas_dead": report.replicas_dead,
                        "leases_expired": report.leases_expired,
                        "ingest_removed": report.ingest_removed})
            return
        verb = "would remove" if dry_run else "removed"
        say(f"{verb} {len(report.blobs_removed)} blobs, {human_size(report.bytes_freed)}; "
            f"{report.leases_expired} leases expired, {report.replicas_dead} dead replicas")


