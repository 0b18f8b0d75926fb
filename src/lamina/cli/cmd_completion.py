"""``lamina completion bash|zsh|fish``: the shell's completion script, click's own.

The script calls ``lamina`` back with ``_LAMINA_COMPLETE=<shell>_complete`` (handled in
``lamina.cli.main._run``), so completions always match the installed commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from lamina.cli.format import argument

if TYPE_CHECKING:
    from lamina.store.store import Store

SHELLS = ("bash", "zsh", "fish")


def register(app: click.Group, store_factory: Callable[[], Store]) -> None:
    @app.command()
    @argument("shell", metavar="SHELL", help="bash, zsh or fish.")
    def completion(shell: str) -> None:
        """Print the shell completion script: add `eval "$(lamina completion bash)"` to
        ~/.bashrc (zsh: ~/.zshrc), or `lamina completion fish | source` to fish's
        config."""
        from click.shell_completion import get_completion_class

        from lamina.cli.format import say
        from lamina.errors import InvalidInput

        cls = get_completion_class(shell) if shell in SHELLS else None
        if cls is None:
            raise InvalidInput(f"unknown shell {shell!r}: choose bash, zsh or fish")
        say(cls(app, {}, "lamina", "_LAMINA_COMPLETE").source().rstrip("\n"))
