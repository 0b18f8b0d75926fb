"""``lamina serve``: parse, build a ``ServerConfig``, call ``lamina.server.run.serve``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from lamina.store.store import Store


def register(app: typer.Typer, store_factory: Callable[[], Store]) -> None:
    @app.command()
    def serve(
        root: Annotated[Path | None, typer.Option(
            "--root", help="Store to serve (default: lamina's store).")] = None,
        addr: Annotated[str | None, typer.Option(
            "--addr", help="HOST:PORT to listen on (default 127.0.0.1:5000).")] = None,
        config: Annotated[Path | None, typer.Option(
            "--config", help="TOML file: auth, access rules, limits.")] = None,
        tls_cert: Annotated[Path | None, typer.Option(
            "--tls-cert", help="PEM certificate: serve https.")] = None,
        tls_key: Annotated[Path | None, typer.Option(
            "--tls-key", help="PEM private key for --tls-cert.")] = None,
        log_level: Annotated[str, typer.Option(
            "--log-level", help="debug, info, warning or error.")] = "info",
        no_access_log: Annotated[bool, typer.Option(
            "--no-access-log", help="Do not log each request.")] = False,
    ) -> None:
        """Serve the store as an OCI registry (distribution-spec 1.1)."""
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
        store = Store(root) if root is not None else store_factory()
        serve(store, cfg, ServeOptions(log_level=log_level, access_log=not no_access_log))
