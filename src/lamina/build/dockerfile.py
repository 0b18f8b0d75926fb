"""Containerfile (Dockerfile) parsing: text in, stages of instructions out, nothing run.

The rules are the Dockerfile reference's (https://docs.docker.com/reference/dockerfile/),
section names quoted in the comments, with BuildKit's parser as the tie-breaker where
the reference is silent:

- parser directives (``# escape=``, ``# syntax=``, ``# check=``) only at the very top;
- ``#`` comment lines, also inside a continuation, where they are dropped;
- the escape character at the end of a line continues it ("Escape");
- exec form is a JSON array of strings; anything that is not valid JSON is shell form
  ("Shell and exec form"); a JSON array holding a non-string is an error;
- ``--name=value`` flags at the start of the arguments, checked per instruction;
- every error names the file and line: ``Containerfile:7: unknown instruction: COPPY``.

Arguments are kept as written: nothing is expanded here.  The executor expands with
:mod:`lamina.build.expand` where the reference says to (see that module); the helpers
below (:func:`split_words`, :func:`parse_key_values`, :func:`parse_args`,
:func:`exec_or_shell`, :func:`healthcheck`) turn an :class:`Instruction` into values.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from lamina.build.expand import expand
from lamina.build.runmounts import parse_mount, parse_network
from lamina.errors import InvalidInput, Unsupported

__all__ = [
    "INSTRUCTIONS",
    "Containerfile",
    "Healthcheck",
    "Instruction",
    "Stage",
    "exec_or_shell",
    "healthcheck",
    "parse",
    "parse_arg",
    "parse_args",
    "parse_duration",
    "parse_instruction",
    "parse_key_values",
    "split_words",
]

INSTRUCTIONS = frozenset(
    [
        "ADD",
        "ARG",
        "CMD",
        "COPY",
        "ENTRYPOINT",
        "ENV",
        "EXPOSE",
        "FROM",
        "HEALTHCHECK",
        "LABEL",
        "MAINTAINER",
        "ONBUILD",
        "RUN",
        "SHELL",
        "STOPSIGNAL",
        "USER",
        "VOLUME",
        "WORKDIR",
    ]
)

# Flags each instruction takes (the reference's synopsis of each).  RUN's are parsed
# so that the executor can say which it supports.
_FLAGS: Mapping[str, frozenset[str]] = {
    "FROM": frozenset({"platform"}),
    "RUN": frozenset({"mount", "network", "security"}),
    "COPY": frozenset({"from", "chown", "chmod", "link", "parents", "exclude"}),
    "ADD": frozenset({"chown", "chmod", "link", "checksum", "keep-git-dir", "exclude", "unpack"}),
    "HEALTHCHECK": frozenset({"interval", "timeout", "start-period", "start-interval", "retries"}),
}
_BOOL_FLAGS = frozenset({"link", "parents", "keep-git-dir", "unpack"})
_REPEATABLE_FLAGS = frozenset({"mount", "exclude"})

# Instructions whose arguments may be a JSON array ("Shell and exec form").
_JSON_ABLE = frozenset({"RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD", "VOLUME"})

# "Parser directives": `# directive=value`, case-insensitive names.
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_DIRECTIVES = frozenset({"escape", "syntax", "check"})
# BuildKit's stage name rule ("FROM": AS name).
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9\-_.]*$")
# A heredoc word ("Here-Documents"): <<EOF, <<-EOF, 2<<"EOF".
_HEREDOC = re.compile(r"^\d*<<-?[^<]+$")
_BLANKS = re.compile(r"[\t\v\f\r ]+")


@dataclass(frozen=True)
class Instruction:
    """One instruction as written: keyword, flags and unexpanded arguments.

    ``args`` is the JSON array when ``json_form``, else a 1-tuple holding the rest of
    the line after the flags, never empty where the instruction needs an argument.
    Two instructions differ from that rule: HEALTHCHECK's args are ``("NONE",)`` or
    ``("CMD", *argv)`` (``json_form`` tells which form the command has), and ONBUILD's
    are ``(trigger,)``, the nested instruction's text.
    """

    cmd: str
    args: tuple[str, ...]
    json_form: bool
    flags: Mapping[str, str] = field(hash=False)  # all_flags holds the same, hashably
    original: str
    line: int
    path: str
    # Every flag in order, repeats included (RUN --mount=... --mount=...); ``flags``
    # keeps the last value of each.
    all_flags: tuple[tuple[str, str], ...] = ()
    # The file's escape character (``# escape=``), for splitting and expanding args.
    escape: str = "\\"

    @property
    def location(self) -> str:
        """``Containerfile:7``, for prefixing an error: ``err.context(ins.location)``."""
        return f"{self.path}:{self.line}"

    def flag_values(self, name: str) -> list[str]:
        """All values of a repeatable flag (``mount``, ``exclude``), in order."""
        if not self.all_flags:  # made by hand with flags only
            return [self.flags[name]] if name in self.flags else []
        return [v for k, v in self.all_flags if k == name]

    def error(self, cause: str) -> InvalidInput:
        return InvalidInput(f"{self.location}: {cause}")


@dataclass(frozen=True)
class Stage:
    """A ``FROM`` and the instructions up to the next one ("Multi-stage builds")."""

    index: int
    name: str | None
    base: str
    platform: str | None
    from_instruction: Instruction
    instructions: tuple[Instruction, ...]


@dataclass(frozen=True)
class Containerfile:
    """A parsed file: the ARGs before the first FROM, then the stages in order."""

    path: str
    escape: str
    global_args: tuple[Instruction, ...]
    stages: tuple[Stage, ...]
    # Things a user should hear about that are not errors (empty continuation lines,
    # MAINTAINER), one line each; the CLI prints them.
    warnings: tuple[str, ...] = field(default=())

    def find_stage(self, name_or_index: str) -> Stage | None:
        """The stage named so (names are lower-case), else the one with that number."""
        key = name_or_index.lower()
        for stage in self.stages:
            if stage.name == key:
                return stage
        if key.isdecimal() and int(key) < len(self.stages):
            return self.stages[int(key)]
        return None

    def stage(self, name_or_index: str) -> Stage:
        found = self.find_stage(name_or_index)
        if found is None:
            raise InvalidInput(f"{self.path}: no build stage named {name_or_index!r}")
        return found


# --- reading lines --------------------------------------------------------------------


@dataclass(frozen=True)
class _Logical:
    text: str  # continuations joined, comment lines dropped
    line: int  # 1-based first line


def _directives(lines: Sequence[str], path: str) -> str:
    """The escape character from the parser directives at the top ("Parser directives").

    Directives end at the first line that is not one: an instruction, a blank line, a
    plain comment or an unknown directive (which is then just a comment).
    """
    escape = "\\"
    seen: set[str] = set()
    for number, raw in enumerate(lines, 1):
        m = _DIRECTIVE.match(raw.rstrip("\r\n").lstrip())
        if not m or m.group(1).lower() not in _DIRECTIVES:
            break
        key, value = m.group(1).lower(), m.group(2)
        if key in seen:
            raise InvalidInput(f"{path}:{number}: only one {key} parser directive can be used")
        seen.add(key)
        if key == "escape":
            if value not in ("\\", "`"):
                raise InvalidInput(
                    f"{path}:{number}: invalid escape character {value!r}: use \\ or `"
                )
            escape = value
    return escape


def _continues(line: str, escape: str) -> tuple[str, bool]:
    """``line`` without a trailing continuation, and whether it had one ("Escape").

    Blanks may follow the escape character; an escaped escape (``\\\\``) at the end is
    not a continuation.
    """
    stripped = line.rstrip(" \t")
    if stripped.endswith(escape) and (len(stripped) == 1 or stripped[-2] != escape):
        return stripped[:-1], True
    return line, False


def _is_comment(raw: str) -> bool:
    return raw.lstrip().startswith("#")


def _logical_lines(lines: Sequence[str], escape: str, warnings: list[str]) -> Iterator[_Logical]:
    i = 0
    while i < len(lines):
        first = i + 1
        text = lines[i].lstrip()
        i += 1
        if text.startswith("#"):
            continue
        text, more = _continues(text, escape)
        if not more and not text.strip():
            continue
        empty_line = False
        while more and i < len(lines):
            raw = lines[i]
            i += 1
            if _is_comment(raw):  # a comment inside a continuation is dropped
                continue
            if not raw.strip():
                empty_line = True
                continue
            part, more = _continues(raw, escape)
            text += part
        if empty_line:
            warnings.append(f"line {first}: empty continuation line (Docker will refuse these)")
        yield _Logical(text, first)


# --- one instruction ----------------------------------------------------------------


class _Context:
    def __init__(self, path: str, line: int, escape: str, warnings: list[str]) -> None:
        self.path = path
        self.line = line
        self.escape = escape
        self.warnings = warnings

    def error(self, cause: str) -> InvalidInput:
        return InvalidInput(f"{self.path}:{self.line}: {cause}")


def _split_flags(rest: str, escape: str) -> tuple[list[tuple[str, str | None]], str]:
    """Leading ``--name[=value]`` words and the text after them.

    Quotes and the escape character work inside a flag word (``--chown="a b"``); a
    bare ``--`` ends the flags.
    """
    flags: list[tuple[str, str | None]] = []
    pos = 0
    n = len(rest)
    while True:
        while pos < n and rest[pos].isspace():
            pos += 1
        if not rest.startswith("--", pos):
            return flags, rest[pos:]
        word: list[str] = []
        quote = ""
        start = pos
        while pos < n and (quote or not rest[pos].isspace()):
            ch = rest[pos]
            pos += 1
            if quote and ch == quote:
                quote = ""
            elif not quote and ch in "'\"":
                quote = ch
            elif ch == escape and quote != "'" and pos < n:
                word.append(rest[pos])
                pos += 1
            else:
                word.append(ch)
        text = "".join(word)
        if text == "--" and rest[start:pos] == "--":
            return flags, rest[pos:].lstrip()
        name, eq, value = text[2:].partition("=")
        flags.append((name, value if eq else None))


def _check_flags(
    cmd: str, raw: list[tuple[str, str | None]], ctx: _Context
) -> tuple[tuple[str, str], ...]:
    allowed = _FLAGS.get(cmd, frozenset())
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, value in raw:
        if name not in allowed:
            raise ctx.error(f"unknown flag for {cmd}: --{name}")
        if name in seen and name not in _REPEATABLE_FLAGS:
            raise ctx.error(f"duplicate flag for {cmd}: --{name}")
        seen.add(name)
        if name in _BOOL_FLAGS:
            value = "true" if value is None else value.lower()
            if value not in ("true", "false"):
                raise ctx.error(f"--{name} takes true or false, not {value!r}")
        elif value is None:
            raise ctx.error(f"--{name} needs a value: --{name}=...")
        out.append((name, value))
    return tuple(out)


def _json_args(rest: str, cmd: str, ctx: _Context) -> list[str] | None:
    """The exec form's array, or None for the shell form ("Shell and exec form")."""
    if not rest.startswith("["):
        return None
    try:
        # BuildKit decodes one JSON value and ignores what follows it, so that
        # `CMD ["nginx"] # note` runs nginx; we do the same and say so.
        value, end = json.JSONDecoder().raw_decode(rest)
    except ValueError:
        return None  # not JSON: the shell form, as Docker reads it
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, str) for v in value):
        raise ctx.error(f"{cmd}: a JSON array must hold only strings")
    if rest[end:].strip():
        ctx.warnings.append(
            f"line {ctx.line}: ignoring text after the JSON array: {rest[end:].strip()}"
        )
    return value


def _words(text: str, escape: str) -> list[str]:
    """Words at unquoted blanks, quotes and escapes kept (BuildKit's parseWords)."""
    words: list[str] = []
    word: list[str] = []
    quote = ""
    started = False
    pos = 0
    while pos < len(text):
        ch = text[pos]
        pos += 1
        if not quote and ch.isspace():
            if started:
                words.append("".join(word))
            word, started = [], False
            continue
        started = True
        if quote:
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'" and pos < len(text):
                word.append(ch)
                ch = text[pos]
                pos += 1
        elif ch in "'\"":
            quote = ch
        elif ch == escape and pos < len(text):
            word.append(ch)
            ch = text[pos]
            pos += 1
        word.append(ch)
    if started:
        words.append("".join(word))
    return words


def _check_heredoc(cmd: str, rest: str, ctx: _Context) -> None:
    # "Here-Documents" are for RUN, COPY and ADD in shell form.
    if cmd in ("RUN", "COPY", "ADD") and any(_HEREDOC.match(w) for w in _words(rest, ctx.escape)):
        raise Unsupported(f"{ctx.path}:{ctx.line}: heredocs (<<EOF) are not supported yet")


def _suggest(word: str) -> str:
    close = difflib.get_close_matches(word.upper(), sorted(INSTRUCTIONS), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _instruction(text: str, ctx: _Context) -> Instruction:
    stripped = text.strip()
    word, rest = _keyword(stripped)
    cmd = word.upper()
    if cmd not in INSTRUCTIONS:
        raise ctx.error(f"unknown instruction: {word}{_suggest(word)}")
    raw_flags, rest = _split_flags(rest, ctx.escape)
    rest = rest.strip()
    all_flags = _check_flags(cmd, raw_flags, ctx)
    args: tuple[str, ...] = (rest,)
    json_form = False
    if cmd in _JSON_ABLE:
        array = _json_args(rest, cmd, ctx)
        if array is not None:
            args, json_form = tuple(array), True
        else:
            _check_heredoc(cmd, rest, ctx)
    elif cmd == "HEALTHCHECK":
        args, json_form = _healthcheck_args(rest, bool(raw_flags), ctx)
    elif cmd == "ONBUILD":
        args = (_onbuild_trigger(text, rest, ctx),)
    ins = Instruction(
        cmd=cmd,
        args=args,
        json_form=json_form,
        flags=MappingProxyType(dict(all_flags)),
        original=stripped,
        line=ctx.line,
        path=ctx.path,
        all_flags=all_flags,
        escape=ctx.escape,
    )
    _validate(ins, ctx)
    return ins


def _keyword(text: str) -> tuple[str, str]:
    """The first word and the rest, split at the first run of blanks."""
    parts = _BLANKS.split(text, maxsplit=1)
    return parts[0], parts[1] if len(parts) > 1 else ""


def _healthcheck_args(rest: str, has_flags: bool, ctx: _Context) -> tuple[tuple[str, ...], bool]:
    kind, command = _keyword(rest)
    kind = kind.upper()
    if kind == "NONE":
        if command or has_flags:
            raise ctx.error("HEALTHCHECK NONE takes no arguments")
        return ("NONE",), False
    if kind != "CMD":
        if not kind:
            raise ctx.error("HEALTHCHECK needs CMD or NONE")
        raise ctx.error(f"unknown type {kind!r} in HEALTHCHECK (try CMD)")
    array = _json_args(command, "HEALTHCHECK", ctx)
    if array is not None:
        if not array:
            raise ctx.error("missing command after HEALTHCHECK CMD")
        return ("CMD", *array), True
    if not command:
        raise ctx.error("missing command after HEALTHCHECK CMD")
    return ("CMD", command), False


def _onbuild_trigger(text: str, rest: str, ctx: _Context) -> str:
    # "ONBUILD": any instruction but ONBUILD itself, FROM and MAINTAINER.
    if not rest:
        raise ctx.error("ONBUILD needs an instruction to run in the child build")
    trigger = re.sub(r"(?i)^\s*ONBUILD\s*", "", text).strip()
    nested = _keyword(trigger)[0].upper()
    if nested == "ONBUILD":
        raise ctx.error("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if nested in ("FROM", "MAINTAINER"):
        raise ctx.error(f"{nested} isn't allowed as an ONBUILD trigger")
    _instruction(trigger, ctx)
    return trigger


def _validate(ins: Instruction, ctx: _Context) -> None:
    """The argument counts the reference's synopsis of each instruction implies."""
    cmd, args = ins.cmd, ins.args
    # No argument at all: no text in the shell form, an empty array in the exec form.
    empty = not args or (not ins.json_form and not args[0])
    if cmd in ("ENV", "LABEL"):
        _key_value_words(ins)
    elif cmd == "ARG":
        _arg_words(ins)
    elif cmd in ("COPY", "ADD"):
        if len(split_words(ins)) < 2:
            raise ctx.error(f"{cmd} needs a source and a destination")
    elif cmd == "FROM":
        _from_words(ins, ctx)
    elif cmd == "SHELL":
        if not ins.json_form:
            raise ctx.error('SHELL needs the JSON form: SHELL ["executable", "parameters"]')
        if not args:
            raise ctx.error("SHELL requires at least one argument")
    elif cmd in ("RUN", "VOLUME", "EXPOSE") and empty:
        raise ctx.error(f"{cmd} requires at least one argument")
    elif cmd in ("WORKDIR", "USER", "STOPSIGNAL", "MAINTAINER") and empty:
        raise ctx.error(f"{cmd} requires exactly one argument")
    elif cmd in ("CMD", "ENTRYPOINT") and not ins.json_form and not args[0]:
        raise ctx.error(f"{cmd} requires an argument (use {cmd} [] for none)")
    if cmd == "VOLUME" and any(not v.strip() for v in args):
        raise ctx.error("VOLUME can not be an empty string")
    if cmd == "HEALTHCHECK":
        healthcheck(ins)
    if cmd == "RUN":
        _run_flags(ins, ctx)


def _run_flags(ins: Instruction, ctx: _Context) -> None:
    """RUN's --mount and --network, checked now so that a typo fails before any step
    runs; a value holding a variable is checked by the executor once expanded."""
    try:
        for text in ins.flag_values("mount"):
            if "$" not in text:
                parse_mount(text)
        network = ins.flags.get("network")
        if network is not None and "$" not in network:
            parse_network(network)
    except InvalidInput as err:
        raise ctx.error(err.message) from None


def _from_words(ins: Instruction, ctx: _Context) -> tuple[str, str | None]:
    # "FROM": FROM [--platform=<platform>] <image> [AS <name>]
    words = _BLANKS.split(ins.args[0]) if ins.args[0] else []
    if len(words) == 3 and words[1].lower() == "as":
        name = words[2].lower()
        if not _STAGE_NAME.match(name):
            raise ctx.error(
                f"invalid stage name {words[2]!r}: use a letter, then letters, digits, - _ ."
            )
        return words[0], name
    if len(words) != 1:
        raise ctx.error("FROM takes an image and optionally AS name: FROM image [AS name]")
    return words[0], None


# --- the whole file -----------------------------------------------------------------


def parse_instruction(
    text: str, path: str = "Containerfile", line: int = 1, escape: str = "\\"
) -> Instruction:
    """One instruction from its text, e.g. an ONBUILD trigger run in a child build."""
    ctx = _Context(path, line, escape, [])
    if not text.strip():
        raise ctx.error("empty instruction")
    return _instruction(text, ctx)


def parse(text: str, path: str = "Containerfile") -> Containerfile:
    """Parse a Containerfile; :class:`InvalidInput` naming file and line if it is bad."""
    text = text.removeprefix("\ufeff")
    lines = [raw.rstrip("\r\n") for raw in text.split("\n")]
    escape = _directives(lines, path)
    warnings: list[str] = []
    global_args: list[Instruction] = []
    stages: list[Stage] = []
    current: list[Instruction] = []
    head: Instruction | None = None

    def close_stage() -> None:
        if head is None:
            return
        base, name = _from_words(head, _Context(path, head.line, escape, warnings))
        platform = head.flags.get("platform")
        stages.append(Stage(len(stages), name, base, platform, head, tuple(current)))

    names: dict[str, int] = {}
    for logical in _logical_lines(lines, escape, warnings):
        ctx = _Context(path, logical.line, escape, warnings)
        ins = _instruction(logical.text, ctx)
        if ins.cmd == "FROM":
            close_stage()
            head, current = ins, []
            _, name = _from_words(ins, ctx)
            if name is not None:
                if name in names:
                    raise ctx.error(f"duplicate stage name {name!r} (also on line {names[name]})")
                names[name] = ins.line
        elif head is None:
            if ins.cmd != "ARG":
                raise ctx.error(f"{ins.cmd} before the first FROM (only ARG may come before it)")
            global_args.append(ins)
        else:
            if ins.cmd == "MAINTAINER":
                warnings.append(f"line {ins.line}: MAINTAINER is deprecated, use a LABEL")
            current.append(ins)
    close_stage()
    if not stages:
        what = "no FROM instruction" if global_args else "file with no instructions"
        raise InvalidInput(f"{path}: {what}")
    return Containerfile(
        path=path,
        escape=escape,
        global_args=tuple(global_args),
        stages=tuple(stages),
        warnings=tuple(f"{path}: {w}" for w in warnings),
    )


# --- turning instructions into values ------------------------------------------------


def split_words(ins: Instruction) -> list[str]:
    """The arguments as separate words, not expanded.

    The JSON array for the exec form; otherwise the text split at unquoted blanks,
    quotes kept so that :func:`expand` can remove them (COPY ``"my file" /dst``).
    Expand each word on its own, as BuildKit does: a variable holding a blank does not
    make two paths.
    """
    if ins.json_form:
        return list(ins.args)
    return _words(ins.args[0], ins.escape)


def _key_value_words(ins: Instruction) -> list[tuple[str, str]]:
    """ENV/LABEL as raw (key, value) pairs, before expansion ("ENV", "LABEL")."""
    rest = ins.args[0]
    words = _words(rest, ins.escape)
    if not words:
        raise ins.error(f"{ins.cmd} requires at least one argument")
    if "=" not in words[0]:
        # The legacy form: ENV key value (the whole rest is the value).
        parts = _BLANKS.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise ins.error(f"{ins.cmd} {parts[0]} needs a value: {ins.cmd} {parts[0]}=value")
        return [(parts[0], parts[1])]
    pairs = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq:
            raise ins.error(f"{ins.cmd}: can't find = in {word!r}; use name=value")
        if not key:
            raise ins.error(f"{ins.cmd} names can not be blank")
        pairs.append((key, value))
    return pairs


def _arg_words(ins: Instruction) -> list[tuple[str, str | None]]:
    words = _words(ins.args[0], ins.escape)
    if not words:
        raise ins.error("ARG requires at least one argument")
    out: list[tuple[str, str | None]] = []
    for word in words:
        key, eq, value = word.partition("=")
        if not key:
            raise ins.error("ARG names can not be blank")
        out.append((key, value if eq else None))
    return out


def parse_key_values(ins: Instruction, env: Mapping[str, str]) -> list[tuple[str, str]]:
    """ENV or LABEL pairs, expanded with ``env``: ``K=V K2="v 2"`` or legacy ``K V``.

    Every pair expands against the same ``env`` (the one before the instruction), so
    ``ENV a=1 b=$a`` gives b the *old* a, as the reference's ENV example shows.
    """
    if ins.cmd not in ("ENV", "LABEL"):
        raise ValueError(f"parse_key_values takes ENV or LABEL, not {ins.cmd}")
    try:
        return [
            (expand(k, env, ins.escape), expand(v, env, ins.escape))
            for k, v in _key_value_words(ins)
        ]
    except InvalidInput as err:
        raise err.context(ins.location) from None


def parse_args(ins: Instruction, env: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """An ARG's ``NAME`` / ``NAME=default`` declarations; defaults expanded with ``env``.

    One ARG may declare several (``ARG a=1 b``); the value is None without a default.
    """
    if ins.cmd != "ARG":
        raise ValueError(f"parse_args takes ARG, not {ins.cmd}")
    try:
        return [
            (expand(k, env, ins.escape), None if v is None else expand(v, env, ins.escape))
            for k, v in _arg_words(ins)
        ]
    except InvalidInput as err:
        raise err.context(ins.location) from None


def parse_arg(ins: Instruction, env: Mapping[str, str]) -> tuple[str, str | None]:
    """The single declaration of an ``ARG NAME[=default]``; see :func:`parse_args`."""
    declared = parse_args(ins, env)
    if len(declared) != 1:
        raise ins.error("this ARG declares several names; expected one")
    return declared[0]


def exec_or_shell(ins: Instruction, shell: Sequence[str]) -> list[str]:
    """RUN/CMD/ENTRYPOINT argv: the JSON array as is; a shell form after ``shell``."""
    if ins.json_form:
        return list(ins.args)
    return [*shell, ins.args[0]]


# --- HEALTHCHECK -------------------------------------------------------------------

_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_duration(text: str) -> int:
    """A Go duration (``30s``, ``1m30s``, ``1.5h``) in nanoseconds; ValueError if bad."""
    if text == "0":
        return 0
    pos, total = 0, 0.0
    if not text:
        raise ValueError("empty duration")
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if not m:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return int(total)


@dataclass(frozen=True)
class Healthcheck:
    """The image config's Healthcheck; durations in nanoseconds, 0 meaning the default."""

    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0

    def to_json(self) -> dict[str, object]:
        """The config JSON object (Docker's field names), zero fields omitted."""
        out: dict[str, object] = {"Test": list(self.test)}
        for key, value in (
            ("Interval", self.interval),
            ("Timeout", self.timeout),
            ("StartPeriod", self.start_period),
            ("StartInterval", self.start_interval),
            ("Retries", self.retries),
        ):
            if value:
                out[key] = value
        return out


def healthcheck(ins: Instruction) -> Healthcheck:
    """HEALTHCHECK as config: ``["NONE"]``, ``["CMD", ...]`` or ``["CMD-SHELL", cmd]``."""
    if ins.cmd != "HEALTHCHECK":
        raise ValueError(f"healthcheck takes HEALTHCHECK, not {ins.cmd}")
    if ins.args[0] == "NONE":
        return Healthcheck(("NONE",))
    test = ("CMD", *ins.args[1:]) if ins.json_form else ("CMD-SHELL", ins.args[1])
    durations = {}
    for flag in ("interval", "timeout", "start-period", "start-interval"):
        value = ins.flags.get(flag, "")
        if not value:
            durations[flag] = 0
            continue
        try:
            ns = parse_duration(value)
        except ValueError:
            raise ins.error(f"--{flag}={value}: not a duration like 30s or 1m30s") from None
        if ns < 1_000_000:
            raise ins.error(f"--{flag}={value}: cannot be less than 1ms")
        durations[flag] = ns
    retries = 0
    if ins.flags.get("retries"):
        value = ins.flags["retries"]
        if not value.isdecimal() or int(value) < 1:
            raise ins.error(f"--retries={value}: must be a whole number of at least 1")
        retries = int(value)
    return Healthcheck(
        test=test,
        interval=durations["interval"],
        timeout=durations["timeout"],
        start_period=durations["start-period"],
        start_interval=durations["start-interval"],
        retries=retries,
    )
