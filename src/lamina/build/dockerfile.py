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
- here-documents ("Here-Documents") after RUN, COPY and ADD in shell form: each
  ``<<WORD`` in the line takes the lines after it up to ``WORD`` (BuildKit's
  parser.go ``heredocsFromLine``); :class:`Heredoc` keeps the body as written;
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from lamina.build.expand import expand
from lamina.build.runmounts import parse_mount, parse_network
from lamina.errors import InvalidInput

__all__ = [
    "INSTRUCTIONS",
    "Containerfile",
    "Healthcheck",
    "Heredoc",
    "Instruction",
    "Stage",
    "exec_or_shell",
    "healthcheck",
    "heredoc_word",
    "parse",
    "parse_arg",
    "parse_args",
    "check_checksum",
    "parse_chmod",
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
# A heredoc word ("Here-Documents"): <<EOF, <<-EOF, 2<<"EOF", << EOF (BuildKit's
# parser.go reHeredoc: optional fd digits, an optional "-", blanks, then the word).
_HEREDOC = re.compile(r"^(\d*)<<(-?)\s*([^<]*)$")
_HEREDOC_ABLE = frozenset({"RUN", "COPY", "ADD"})
_BLANKS = re.compile(r"[\t\v\f\r ]+")


@dataclass(frozen=True)
class Heredoc:
    """One here-document of an instruction ("Here-Documents").

    ``content`` is the body exactly as written, each line with its ``\\n``, the
    terminator line left out.  ``chomp`` is ``<<-`` (leading tabs are stripped from
    the body where it is used, and from the terminator line when looking for it);
    ``expand`` is False when any part of the word was quoted (``<<"EOF"``,
    ``<<'EOF'``): COPY then writes the body without expanding ``$VAR``.
    """

    name: str
    content: str
    chomp: bool = False
    expand: bool = True
    fd: int = 0

    @property
    def body(self) -> str:
        """The content as used: with ``<<-``, without the leading tabs of each line
        (BuildKit's ``ChompHeredocContent``)."""
        return re.sub(r"(?m)^\t+", "", self.content) if self.chomp else self.content


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
    # The here-documents the line opens, in order (RUN, COPY, ADD in shell form).
    heredocs: tuple[Heredoc, ...] = ()

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
    # What lamina does differently from what the file asks, said once (a ``# syntax=``
    # frontend it does not load); the CLI prints them on stderr.
    notes: tuple[str, ...] = field(default=())

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
    heredocs: tuple[Heredoc, ...] = ()


def _directives(lines: Sequence[str], path: str, notes: list[str] | None = None) -> str:
    """The escape character from the parser directives at the top ("Parser directives").

    Directives end at the first line that is not one: an instruction, a blank line, a
    plain comment or an unknown directive (which is then just a comment).  ``syntax``
    names a frontend image BuildKit would load to parse the file; lamina parses every
    file itself, so it is accepted with a note in ``notes``.  ``check`` configures
    BuildKit's linter, which lamina does not have: accepted silently.
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
        elif key == "syntax" and notes is not None:
            notes.append(f"{path}:{number}: note: ignoring '# syntax={value}': lamina parses "
                         "the file with its own Dockerfile frontend")
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


def _logical_lines(lines: Sequence[str], escape: str, warnings: list[str],
                   path: str = "Containerfile") -> Iterator[_Logical]:
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
        heredocs: list[Heredoc] = []
        if "<<" in text and _may_hold_heredocs(text, escape):
            # BuildKit (parser.go Parse): the bodies follow the whole logical line, one
            # after the other in the order the words open them; body lines are raw
            # (no comments, no continuations).
            for fd, chomp, name, expand_body in _heredoc_words(text):
                body: list[str] = []
                while True:
                    if i >= len(lines) or (i == len(lines) - 1 and not lines[i]):
                        raise InvalidInput(f"{path}:{first}: unterminated heredoc: no line "
                                           f"{name!r} ends the one opened here")
                    raw = lines[i]
                    i += 1
                    if (raw.lstrip("\t") if chomp else raw) == name:
                        break
                    body.append(raw + "\n")
                heredocs.append(Heredoc(name, "".join(body), chomp, expand_body, fd))
        yield _Logical(text, first, tuple(heredocs))


def _may_hold_heredocs(text: str, escape: str) -> bool:
    """RUN, COPY, ADD (also as an ONBUILD trigger) in shell form (parser.go
    ``canContainHeredoc``: not for the JSON form)."""
    word, rest = _keyword(text.strip())
    if word.upper() == "ONBUILD":
        word, rest = _keyword(rest.strip())
    if word.upper() not in _HEREDOC_ABLE:
        return False
    rest = _split_flags(rest, escape)[1].strip()
    if rest.startswith("["):
        try:
            value, _ = json.JSONDecoder().raw_decode(rest)
        except ValueError:
            return True
        return not isinstance(value, list)
    return True


def _heredoc_words(text: str) -> list[tuple[int, bool, str, bool]]:
    """(fd, chomp, name, expand) for each heredoc word of a line, in order.  Words
    split as BuildKit's ``heredocsFromLine`` does, always with ``\\`` as the escape."""
    out = []
    for word in _line_words(text, "\\"):
        found = heredoc_word(word)
        if found is not None:
            out.append(found)
    return out


def _line_words(text: str, escape: str) -> list[str]:
    """:func:`_words`, with ``<<`` and the blanks after it joined to the next word (the
    lexer's ``processPossibleHeredoc``: ``<< EOF`` is one heredoc word)."""
    words = _words(text, escape)
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if re.fullmatch(r"\d*<<", word) and i + 1 < len(words):
            word = f"{word} {words[i + 1]}"
            i += 1
        out.append(word)
        i += 1
    return out


def heredoc_word(word: str) -> tuple[int, bool, str, bool] | None:
    """``(fd, chomp, name, expand)`` if ``word`` opens a heredoc (``<<EOF``,
    ``<<-"EOF"``, ``3<<EOF``), else None (BuildKit's ``ParseHeredoc``).  ``name`` has
    its quotes removed; ``expand`` is False if any part of it was quoted."""
    m = _HEREDOC.match(word)
    if not m or not m.group(3):
        return None
    name, quoted = _unquote(m.group(3))
    if name is None:
        return None
    return int(m.group(1) or 0), m.group(2) == "-", name, not quoted


def _unquote(word: str) -> tuple[str | None, bool]:
    """The one word ``word`` stands for, quotes and escapes removed, and whether a quote
    was removed; (None, False) when it is not exactly one non-empty word."""
    out: list[str] = []
    quote = ""
    quoted = False
    pos = 0
    while pos < len(word):
        ch = word[pos]
        pos += 1
        if quote:
            if ch == quote:
                quote = ""
            elif ch == "\\" and quote == '"' and pos < len(word) and word[pos] in '"\\$':
                out.append(word[pos])
                pos += 1
            else:
                out.append(ch)
        elif ch in "'\"":
            quote, quoted = ch, True
        elif ch == "\\" and pos < len(word):
            out.append(word[pos])
            pos += 1
        elif ch.isspace():
            return None, False
        else:
            out.append(ch)
    if quote or not out:
        return None, False
    return "".join(out), quoted


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


def _suggest(word: str) -> str:
    close = difflib.get_close_matches(word.upper(), sorted(INSTRUCTIONS), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _instruction(text: str, ctx: _Context, heredocs: tuple[Heredoc, ...] = ()) -> Instruction:
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
    elif cmd == "HEALTHCHECK":
        args, json_form = _healthcheck_args(rest, bool(raw_flags), ctx)
    elif cmd == "ONBUILD":
        args = (_onbuild_trigger(text, rest, ctx, heredocs),)
        heredocs = ()
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
        heredocs=heredocs if cmd in _HEREDOC_ABLE and not json_form else (),
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


def _onbuild_trigger(text: str, rest: str, ctx: _Context, heredocs: tuple[Heredoc, ...]) -> str:
    # "ONBUILD": any instruction but ONBUILD itself, FROM and MAINTAINER.
    if not rest:
        raise ctx.error("ONBUILD needs an instruction to run in the child build")
    trigger = re.sub(r"(?i)^\s*ONBUILD\s*", "", text).strip()
    nested = _keyword(trigger)[0].upper()
    if nested == "ONBUILD":
        raise ctx.error("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if nested in ("FROM", "MAINTAINER"):
        raise ctx.error(f"{nested} isn't allowed as an ONBUILD trigger")
    _instruction(trigger, ctx, heredocs)
    # The trigger keeps its here-documents as written, each body then its terminator
    # (BuildKit instructions/parse.go parseOnBuild), so that it parses again as it was.
    for doc in heredocs:
        trigger += f"\n{doc.content}{doc.name}"
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
        words = split_words(ins)
        if len(words) < 2:
            raise ctx.error(f"{cmd} needs a source and a destination")
        if not ins.json_form and heredoc_word(words[-1]) is not None:
            raise ctx.error(f"{cmd} cannot accept a heredoc as a destination")
        _copy_flags(ins, ctx)
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


def _copy_flags(ins: Instruction, ctx: _Context) -> None:
    """COPY/ADD flag values that are wrong whatever the build: refused before anything
    is built (BuildKit checks them when it converts the file, before it solves)."""
    # A value holding $ is checked after expansion, by the executor.
    chmod = ins.flags.get("chmod")
    if chmod is not None and "$" not in chmod and parse_chmod(chmod) is None:
        raise ctx.error(f"invalid --chmod={chmod}: an octal mode from 0 to 7777 expected")
    checksum = ins.flags.get("checksum")
    if checksum is not None and "$" not in checksum:
        check_checksum(checksum, ctx.error)


def check_checksum(value: str, error: Callable[[str], InvalidInput]) -> None:
    """ADD --checksum: a digest BuildKit's ``digest.Parse`` takes, or a git commit."""
    if not _CHECKSUM.fullmatch(value):
        raise error(f"invalid --checksum={value}: sha256:<64 hex digits> (or a git commit) "
                    "expected")


# A git commit may be given by a prefix of 7 or more hex digits.
_CHECKSUM = re.compile(r"sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128}"
                       r"|[0-9a-f]{7,40}")


def parse_chmod(text: str) -> int | None:
    """An octal ``--chmod`` value (0 to 07777, BuildKit's range), or None if it is not
    one.  A ``$VAR`` in it is expanded first by the caller."""
    if not re.fullmatch(r"[0-7]{1,5}", text):
        return None
    mode = int(text, 8)
    return mode if mode <= 0o7777 else None


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
    """One instruction from its text, e.g. an ONBUILD trigger run in a child build (its
    here-documents, if any, on the lines after it, as ONBUILD keeps them)."""
    ctx = _Context(path, line, escape, [])
    if not text.strip():
        raise ctx.error("empty instruction")
    logical = list(_logical_lines(text.split("\n"), escape, [], path))
    if len(logical) != 1:
        raise ctx.error("expected one instruction")
    return _instruction(logical[0].text, ctx, logical[0].heredocs)


def parse(text: str, path: str = "Containerfile") -> Containerfile:
    """Parse a Containerfile; :class:`InvalidInput` naming file and line if it is bad."""
    text = text.removeprefix("\ufeff")
    lines = [raw.rstrip("\r\n") for raw in text.split("\n")]
    notes: list[str] = []
    escape = _directives(lines, path, notes)
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
    for logical in _logical_lines(lines, escape, warnings, path):
        ctx = _Context(path, logical.line, escape, warnings)
        ins = _instruction(logical.text, ctx, logical.heredocs)
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
        notes=tuple(notes),
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
    if ins.heredocs:
        return _line_words(ins.args[0], ins.escape)
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
