"""``--max-expansion``: the one option of unpack, run and load that bounds how far a
compressed layer may expand (lamina.layer.options.ExpansionLimit)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from lamina.cli.format import option

F = TypeVar("F", bound=Callable[..., Any])


def _set_expansion(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    from lamina.layer.options import EXPANSION_ENV, ExpansionLimit

    # Checked here, then handed to every decompression of this process the way
    # LAMINA_MAX_EXPANSION would be (they happen rooms away: snapshots, rootfs, load).
    ExpansionLimit.parse(value, "--max-expansion")
    os.environ[EXPANSION_ENV] = value


def expansion_option(f: F) -> F:
    return option("--max-expansion", metavar="RATIO[:FLOOR]", callback=_set_expansion,
                  expose_value=False,
                  help="How far a compressed layer may expand: RATIO times its size, at "
                       "least FLOOR (default 100:1GiB, or $LAMINA_MAX_EXPANSION); off for "
                       "no limit.")(f)
