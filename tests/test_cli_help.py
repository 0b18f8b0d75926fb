"""Every help page, for the glitches a new click release brought (issue 10, item 20): with
click 8.5 the pages showed ``[default: Sentinel.UNSET]``, listed the arguments twice, drew
``{IMAGE...}...`` in a usage line, and a mistyped command got "Did you mean" twice.

In-process, through lamina's own ``main`` (as the ``lamina`` script runs it), so the walk
over ~30 pages takes well under a second."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator

import click
import pytest

from lamina.cli.main import app, main

_HEADER = re.compile(r"^([A-Z][A-Za-z ]*):$")


def _walk(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path under ``group``, groups included, depth first."""
    yield path
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None
        if isinstance(cmd, click.Group):
            yield from _walk(cmd, (*path, name))
        else:
            yield (*path, name)


def _lamina(args: list[str], capsys: pytest.CaptureFixture[str],
            monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["lamina", *args])
    with pytest.raises(SystemExit) as exc:
        main(fast_exit=False)
    got = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 1), got.out, got.err


# A click deprecation (as 8.5's of ``PacifyFlushWrapper``) is an incompatibility on its way.
pytestmark = pytest.mark.filterwarnings("error::DeprecationWarning")

COMMANDS = list(_walk(app))


def test_the_walk_reaches_nested_groups() -> None:
    assert ("pull",) in COMMANDS and () in COMMANDS
    assert len(COMMANDS) > 20


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "lamina")
def test_help_page_has_no_glitches(path: tuple[str, ...], capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = _lamina([*path, "--help"], capsys, monkeypatch)
    assert code == 0, err
    assert "Sentinel" not in out and "UNSET" not in out, out
    lines = out.splitlines()
    usage = [ln for ln in lines if ln.startswith("Usage:")]
    assert len(usage) == 1, out
    assert "{" not in usage[0] and "...." not in usage[0], usage[0]
    headers = [(i, m[1]) for i, ln in enumerate(lines) if (m := _HEADER.match(ln))]
    names = [h for _, h in headers]
    assert len(names) == len(set(names)), f"a section twice: {names}\n{out}"
    # click 8.5's "Positional arguments" beside lamina's "Arguments" lists them twice
    assert not {"Arguments", "Positional arguments"} <= set(names), out
    # lamina's rows (``--jobs <int>``) on every page, not click's own (``--addr TEXT``,
    # ``--max-connections INTEGER RANGE ... [x>=1]``) on a page that bypassed them
    rows = [ln for ln in lines if ln.startswith("  -")]
    for row in rows:
        assert not re.match(r"  -\S*(, -\S*)? (TEXT|PATH|INTEGER|FLOAT|BOOLEAN|FILENAME)"
                            r"( RANGE)?(\s\s|$)", row), row
    assert not re.search(r"\[x[<>]", out), out
    for i, name in headers:
        body = lines[i + 1] if i + 1 < len(lines) else ""
        assert body.startswith("  ") and body.strip(), f"section {name!r} is empty:\n{out}"
    cmd: click.Command = app
    for part in path:
        assert isinstance(cmd, click.Group)
        nxt = cmd.get_command(click.Context(cmd), part)
        assert nxt is not None
        cmd = nxt
    if isinstance(cmd, click.Group):   # a command that may be left out is bracketed
        pieces = "[COMMAND] [ARGS]..." if cmd.invoke_without_command else "COMMAND [ARGS]..."
        assert usage[0].endswith(f" {pieces}"), usage[0]
    # every argument in the usage line is listed once, under Arguments
    for param in cmd.params:
        if isinstance(param, click.Argument):
            name = re.escape(param.human_readable_name.removesuffix("..."))
            shown = [ln for ln in lines if re.match(rf"^  {name}(\.\.\.)? ", ln)]
            assert len(shown) == 1, f"{param.name} listed {len(shown)} times:\n{out}"


def test_unknown_command_suggests_once(capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = _lamina(["pussh"], capsys, monkeypatch)
    assert code == 2
    assert err.count("Did you mean") == 1, err
    assert "'push'" in err
