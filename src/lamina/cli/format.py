"""What the CLI looks like: human forms of sizes, ages and tables, and its parameters and
help pages — the CLI's only drawing code.

Cheap to import (every ``lamina`` run does): rich's consoles ``out`` and ``err`` are made
on first use, so a command that only writes tables never imports rich.

The parameter classes keep the help pages and usage errors that lamina had under typer
0.29 (``REF <str>`` under Arguments, ``[default: 3]``, pydantic's message for a bad
integer), on plain click without typer's per-run signature inspection and pydantic
adapters.  Usage lines are click's and Docker's (``REF``, ``[REF]``, ``SRC...``).

The help pages are drawn here, not by click, and read nothing click changed between 8.1
and 8.5: click 8.3 made an unset default the ``Sentinel.UNSET`` object (read here through
``to_info_dict``, which shows it as None); 8.5 added a "Positional arguments" section of
its own (``format_arguments``, a no-op here: ours is "Arguments"); 8.4 made
``NoSuchCommand`` add its own "Did you mean" (the suggestion here is raised as a plain
usage error).  ``tests/test_cli_help.py`` walks every help page for such glitches.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.formatting import join_options

from lamina.units import human_size as human_size  # the CLI's name for it, re-exported

if TYPE_CHECKING:
    from rich.console import Console

    out: Console  # stdout
    err: Console  # stderr

_console_lock = threading.Lock()

if not TYPE_CHECKING:  # for mypy, out and err are the Consoles declared above

    def __getattr__(name: str) -> Any:
        """``out`` and ``err``, made on first use (rich.console takes ~50 ms to import)."""
        if name not in ("out", "err"):
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        with _console_lock:
            if name not in globals():
                from rich.console import Console

                globals()[name] = Console(stderr=name == "err", soft_wrap=True,
                                          highlight=False)
        return globals()[name]


def say(text: str, stream: Any = None) -> None:
    """A plain line, without importing rich (for commands timed against Go peers)."""
    target = stream or sys.stdout
    target.write(text + "\n")
    target.flush()


def parse_time(text: str | None) -> _dt.datetime | None:
    if not text:
        return None
    try:
        t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=_dt.UTC)


def human_age(text: str | None, now: _dt.datetime | None = None) -> str:
    t = parse_time(text)
    if t is None:
        return "N/A"
    now = now or _dt.datetime.now(_dt.UTC)
    secs = int((now - t).total_seconds())
    if secs < 0:
        return "in the future"
    for unit, size in (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400),
                       ("day", 86400), ("hour", 3600), ("minute", 60)):
        if secs >= size:
            k = secs // size
            return f"{k} {unit}{'s' if k > 1 else ''} ago" if k > 1 else (
                f"About an {unit} ago" if unit == "hour" else f"1 {unit} ago")
    return f"{secs} seconds ago" if secs > 1 else "Less than a second ago"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A Docker-style table: capital headers, columns padded by three spaces, no borders,
    never wrapped (pipes and scripts see whole lines)."""
    widths = [len(h) for h in headers]
    for r in rows:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for r in [list(headers), *[list(x) for x in rows]]:
        cells = [c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r)]
        lines.append("   ".join(cells).rstrip())
    sys.stdout.write("\n".join(lines) + "\n")


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")



# -- parameters and help pages ---------------------------------------------------------
F = TypeVar("F", bound=Callable[..., Any])


def _escape(text: str) -> str:
    """Terminal control characters in user input, shown as ``\\x1b`` in messages."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f]", lambda m: f"\\x{ord(m[0]):02x}", text)


if TYPE_CHECKING:
    _ParamType = click.ParamType[Any]  # generic from click 8.5 on (mypy runs on the pins)
else:
    _ParamType = click.ParamType


class IntType(_ParamType):
    """Integers read the way typer's pydantic read them: surrounding whitespace, ``1_000``
    and ``3.0`` accepted, ``3.5``, ``0x10`` and ``1e3`` refused with pydantic's message."""

    name = "integer"
    _INT = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*(?:\.0+)?")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if self._INT.fullmatch(text) is None:
            self.fail("Input should be a valid integer, unable to parse string as an integer",
                      param, ctx)
        return int(text.partition(".")[0])


class PathType(_ParamType):
    """Any string, as a ``Path``; nothing checked here (the library says what is wrong)."""

    name = "path"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> Path:
        return value if isinstance(value, Path) else Path(value)


# kind -> (click type, label in help, label in help for a list of it)
_KINDS: dict[type, tuple[_ParamType, str, str]] = {
    str: (click.STRING, "str", "list[str]"),
    int: (IntType(), "int", "list[int]"),
    Path: (PathType(), "path", "list[Path]"),
}


def _extras(help: str | None, extra: list[str]) -> str:
    text = help or ""
    if extra:
        tail = f"[{'; '.join(extra)}]"
        text = f"{text}  {tail}" if text else tail
    return text


def _shown_default(param: click.Parameter) -> Any:
    """The default to show in help, None when there is none: ``to_info_dict`` gives None
    for click >= 8.3's ``Sentinel.UNSET`` as older clicks gave None for no default."""
    return param.to_info_dict().get("default")


class Arg(click.Argument):
    """An argument with help: ``REF <str>`` under Arguments; ``REF`` (required),
    ``[REF]`` or ``SRC...`` in the usage line, as click and Docker write them; ``'REF'``
    in errors (the metavar instead of the upper-cased name when there is one)."""

    def __init__(self, param_decls: Sequence[str], *, help: str | None = None,
                 label: str = "str", **attrs: Any) -> None:
        super().__init__(param_decls, **attrs)
        self.help = help
        self.label = label

    @property
    def display(self) -> str:
        """``REF``, or ``SRC...`` for a list (a metavar given as ``IMAGE...`` keeps one
        ellipsis)."""
        base = (self.metavar or (self.name or "").upper()).removesuffix("...")
        return base + ("..." if self.nargs != 1 else "")

    def get_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [self.display if self.required else f"[{self.display}]"]

    def get_error_hint(self, ctx: click.Context | None) -> str:
        return f"'{self.display}'"

    def get_help_record(self, ctx: click.Context) -> tuple[str, str]:
        extra = []
        default = _shown_default(self)
        if default is not None and default != ():
            extra.append(f"default: {default}")
        if self.required:
            extra.append("required")
        return f"{self.display} <{self.label}>", _extras(self.help, extra)


class Opt(click.Option):
    """An option shown as ``-j, --jobs <int>  Blobs moved at once.  [default: 3]``."""

    def __init__(self, param_decls: Sequence[str], *, label: str = "str", **attrs: Any
                 ) -> None:
        super().__init__(param_decls, **attrs)
        self.label = label

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        if self.hidden:
            return None
        names = join_options(self.opts)[0]
        if not self.is_flag and not self.count:
            names += f" {self.metavar or f'<{self.label}>'}"
        extra = []
        if self.envvar:
            extra.append(f"env var: {self.envvar}")
        default = _shown_default(self)
        if default is not None and default is not False and default != ():
            extra.append(f"default: {default}")
        if self.required:
            extra.append("required")
        return names, _extras(self.help, extra)


def argument(name: str, *, help: str | None = None, kind: type = str, **attrs: Any
             ) -> Callable[[F], F]:
    """A positional parameter; ``nargs=-1`` for a list (``required=True`` if it may not be
    empty)."""
    ptype, label, list_label = _KINDS[kind]
    many = attrs.get("nargs", 1) != 1
    return click.argument(name, cls=Arg, type=ptype, help=help,
                          label=list_label if many else label, **attrs)


def option(*decls: str, help: str | None = None, kind: type = str, **attrs: Any
           ) -> Callable[[F], F]:
    """An option taking a value (``multiple=True``: repeatable, a list)."""
    ptype, label, list_label = _KINDS[kind]
    return click.option(*decls, cls=Opt, type=ptype, help=help,
                        label=list_label if attrs.get("multiple") else label, **attrs)


def flag(*decls: str, help: str | None = None) -> Callable[[F], F]:
    """A boolean option, false unless given."""
    return click.option(*decls, cls=Opt, is_flag=True, default=False, help=help)


@contextmanager
def _usage_messages() -> Iterator[None]:
    """typer's wording for an unknown option: always ``(Possible options: ...)``."""
    try:
        yield
    except click.NoSuchOption as e:
        message = f"No such option: {_escape(e.option_name)}"
        if e.possibilities:
            message += f" (Possible options: {', '.join(sorted(e.possibilities))})"
        # A new error: click >= 8.4 keeps message and possibilities final.
        raise click.NoSuchOption(e.option_name, message, None, e.ctx) from None


def _format_params(cmd: click.Command, ctx: click.Context,
                   formatter: click.HelpFormatter) -> None:
    args: list[tuple[str, str]] = []
    opts: list[tuple[str, str]] = []
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is not None:
            (args if isinstance(param, click.Argument) else opts).append(record)
    if args:
        with formatter.section("Arguments"):
            formatter.write_dl(args)
    if opts:
        with formatter.section("Options"):
            formatter.write_dl(opts)


class Command(click.Command):
    """A command whose help lists its arguments, and whose usage errors read as before."""

    def format_arguments(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Nothing: ``format_options`` writes Arguments (click >= 8.5 calls this too)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _format_params(self, ctx, formatter)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        allow_extra = ctx.allow_extra_args
        ctx.allow_extra_args = True  # to word the error ourselves
        try:
            with _usage_messages():
                rest = super().parse_args(ctx, args)
        finally:
            ctx.allow_extra_args = allow_extra
        if rest and not allow_extra and not ctx.resilient_parsing:
            ctx.fail(f"Got unexpected extra argument(s) "
                     f"({' '.join(_escape(str(a)) for a in rest)})")
        return rest


class _HelpAsUsageError(click.UsageError):
    """``lamina`` alone: the help, on stderr, exit 2."""

    def __init__(self, ctx: click.Context) -> None:
        super().__init__(ctx.get_help(), ctx=ctx)

    def show(self, file: Any = None) -> None:
        click.echo(self.format_message(), err=True, color=self.ctx.color if self.ctx else None)


class Group(click.Group):
    """Commands listed in the order they were added; a mistyped command gets a suggestion."""

    command_class = Command

    def __init__(self, *args: Any, **attrs: Any) -> None:
        super().__init__(*args, **attrs)
        if attrs.get("subcommand_metavar") is None:
            # One usage line on every click: 8.5 brackets a command that may be left out
            # (``serve [COMMAND]``), 8.1 did not.
            self.subcommand_metavar = ("[COMMAND] [ARGS]..." if self.invoke_without_command
                                       else "COMMAND [ARGS]...")

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def format_arguments(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Nothing: ``format_options`` writes Arguments (click >= 8.5 calls this too)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _format_params(self, ctx, formatter)
        self.format_commands(ctx, formatter)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            raise _HelpAsUsageError(ctx)
        with _usage_messages():
            return super().parse_args(ctx, args)

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            import difflib

            matches = difflib.get_close_matches(args[0], list(self.commands)) if args else []
            if not matches:
                raise
            # A new error, not e: click >= 8.4's NoSuchCommand adds its own suggestion
            # when shown, which would say "Did you mean" twice.
            raise click.UsageError(f"{e.message.rstrip('.')}. Did you mean "
                                   f"{', '.join(repr(m) for m in matches)}?", ctx) from None
