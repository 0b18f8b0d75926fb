"""``lamina inventory``: what this store holds, for an incremental ``save`` on the other
side of an air gap (transport/inventory.py).  ``save --exclude`` is in cli/main.py."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from lamina.cli.format import option


def register(app: click.Group, store_factory: Callable[[], Any]) -> None:
    @app.command()
    @option("-o", "--output", default="-",
            help="Where to write the inventory (JSON); '-' (the default) is stdout.")
    def inventory(output: str) -> None:
        """List the blobs this store holds for its images (digests, sizes, diff_ids):
        give it to `save --exclude` elsewhere to send only what is missing here."""
        from lamina.cli.format import human_size, say
        from lamina.transport.inventory import store_inventory, write_inventory

        with store_factory() as store:
            inv = store_inventory(store)
        if output == "-":
            sys.stdout.buffer.write(inv.to_json())
            sys.stdout.flush()
            return
        write_inventory(inv, Path(output))
        say(f"Wrote {output}: {len(inv.blobs)} blobs, "
            f"{human_size(sum(inv.blobs.values()))}", sys.stderr)
