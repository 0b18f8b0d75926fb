"""``--format``: the small part of Go's text/template that Docker's ``--format`` is used
with, over plain JSON-like values — parsed, never evaluated as Python.

    {{.Field.Sub}}         a field; a list prints as [a b], a map as map[k:v]
    {{json .Field}}        JSON (compact, as Go's json.Marshal); {{json .}} everything
    {{index .List 0}}      an element (or {{index .Map "key"}})
    {{join .List ", "}}    Docker's join; also {{upper .X}}, {{lower .X}}
    \\t  \\n                 a tab, a newline (as Docker replaces them)

``table `` before the template gives a header row and columns aligned on tabs, and the
bare word ``json`` means ``{{json .}}``, both as ``docker images --format`` has them.  An
unknown field is one line, as Go's: ``template: :1:2: executing "" at <.Foo>: can't
evaluate field Foo``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lamina.errors import InvalidInput

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
_TOKEN = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|(-?[0-9]+)|(\.[A-Za-z0-9_.]*)|([A-Za-z_]\w*))')


class TemplateError(InvalidInput):
    """A --format template that does not parse or names what is not there."""


@dataclass(frozen=True)
class _Field:
    path: tuple[str, ...]   # () is the dot itself
    col: int                # 1-based column of the action, for messages

    @property
    def text(self) -> str:
        return "." + ".".join(self.path)


class _Name(str):
    """A function's name, as against a quoted string."""


_Arg = _Field | _Name | str | int
_Piece = str | tuple[str | None, list[_Arg], int]   # text, or (function, args, column)


def _parse_action(body: str, col: int) -> tuple[str | None, list[_Arg], int]:
    args: list[_Arg] = []
    pos = 0
    while pos < len(body):
        m = _TOKEN.match(body, pos)
        if m is None or m.end() == pos:
            raise TemplateError(f"template: :1:{col}: unexpected {body[pos:].strip()!r} "
                                f"in command")
        pos = m.end()
        if m[1] is not None:
            args.append(json.loads(f'"{m[1]}"'))
        elif m[2] is not None:
            args.append(int(m[2]))
        elif m[3] is not None:
            parts = m[3][1:].split(".") if m[3] != "." else []
            if any(not p for p in parts):
                raise TemplateError(f"template: :1:{col}: bad field {m[3]!r}")
            args.append(_Field(tuple(parts), col))
        else:
            args.append(_Name(m[4]))
    if not args:
        raise TemplateError(f"template: :1:{col}: missing value for command")
    head = args[0]
    if isinstance(head, _Name):
        if head not in _FUNCS:
            raise TemplateError(f'template: :1: function "{head}" not defined')
        return head, args[1:], col
    if len(args) != 1:
        raise TemplateError(f"template: :1:{col}: can't give argument to non-function")
    return None, args, col


def parse(text: str) -> list[_Piece]:
    text = text.replace("\\t", "\t").replace("\\n", "\n")
    pieces: list[_Piece] = []
    pos = 0
    for m in _ACTION.finditer(text):
        if m.start() > pos:
            pieces.append(text[pos:m.start()])
        pieces.append(_parse_action(m[1], m.start(1)))  # Go: 0-based, as :1:2 for {{.X}}
        pos = m.end()
    rest = text[pos:]
    if "{{" in rest:
        raise TemplateError("template: :1: unclosed action")
    if rest:
        pieces.append(rest)
    return pieces


Structs = dict[tuple[str, ...], frozenset[str]]


def _lookup(value: Any, field: _Field, structs: Structs) -> Any:
    for i, name in enumerate(field.path):
        if isinstance(value, dict) and name in value:
            value = value[name]
            continue
        # Docker's documents are Go structs (capitalised fields): a missing field is an
        # error there, an empty one is not; in a map (Labels, anything lower-case) a
        # missing key is "<no value>".  ``structs`` names the fields of a struct that
        # JSON leaves out when empty (an image config's Env, Cmd, ...).
        known = structs.get(field.path[:i])
        if known is not None:
            if name in known:
                return None
        elif isinstance(value, dict) and not (value and all(
                isinstance(k, str) and k[:1].isupper() for k in value)):
            return None
        at = "." + ".".join(field.path[:i + 1])
        raise TemplateError(f'template: :1:{field.col}: executing "" at <{at}>: '
                            f"can't evaluate field {name}")
    return value


def go_string(value: Any) -> str:
    """A value as Go's fmt prints it: [a b] for lists, map[k:v] for maps."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + " ".join(go_string(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_string(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def _index(value: Any, *keys: Any) -> Any:
    for k in keys:
        try:
            value = value[k]
        except (KeyError, IndexError, TypeError):
            raise TemplateError(f"template: :1: error calling index: index of {k!r} out of "
                                "range") from None
    return value


_FUNCS: dict[str, Callable[..., Any]] = {
    "json": lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False),
    "index": _index,
    "join": lambda v, sep: sep.join(go_string(x) for x in v),
    "upper": lambda v: go_string(v).upper(),
    "lower": lambda v: go_string(v).lower(),
}


def render(pieces: Sequence[_Piece], value: Any, structs: Structs | None = None) -> str:
    out = []
    for p in pieces:
        if isinstance(p, str):
            out.append(p)
            continue
        func, args, col = p
        vals = [_lookup(value, a, structs or {}) if isinstance(a, _Field) else a
                for a in args]
        if func is None:
            out.append(go_string(vals[0]))
            continue
        try:
            result = _FUNCS[func](*vals)
        except TypeError:
            raise TemplateError(f'template: :1:{col}: wrong arguments for "{func}"') from None
        out.append(result if isinstance(result, str) else go_string(result))
    return "".join(out)


@dataclass(frozen=True)
class Format:
    """A parsed ``--format``: ``table`` or not, and the template."""

    pieces: list[_Piece]
    table: bool

    @classmethod
    def parse(cls, text: str) -> Format:
        if text.strip() == "json":
            text = "{{json .}}"
        is_table = text.startswith("table")
        if is_table:
            text = text[len("table"):].lstrip(" ")
        return cls(parse(text), is_table)

    def lines(self, values: Sequence[Any], headers: dict[str, str],
              structs: Structs | None = None) -> list[str]:
        """One line per value; with ``table``, a header row first (each field's name from
        ``headers``) and the tab-separated cells aligned as Docker's tabwriter does."""
        rows = [render(self.pieces, v, structs) for v in values]
        if not self.table:
            return rows
        head = "".join(
            p if isinstance(p, str) else " ".join(
                headers.get(a.path[-1], a.path[-1].upper()) if isinstance(a, _Field)
                and a.path else str(a) for a in p[1]) for p in self.pieces)
        grid = [line.split("\t") for line in [head, *rows]]
        widths: dict[int, int] = {}
        for cells in grid:
            for i, c in enumerate(cells[:-1]):
                widths[i] = max(widths.get(i, 0), len(c))
        return ["   ".join(c.ljust(widths[i]) if i < len(cells) - 1 else c
                           for i, c in enumerate(cells)).rstrip() for cells in grid]
