"""``.containerignore`` / ``.dockerignore``: which context files a build never sees.

The rules are Docker's ("dockerignore file" in the build context documentation), as
moby/patternmatcher applies them:

- one pattern per line; a line starting with ``#`` (in column 1) is a comment; blank
  lines are skipped; leading and trailing whitespace is trimmed;
- a pattern is cleaned like Go's ``filepath.Clean`` (``./a//b/`` is ``a/b``) and a
  leading ``/`` is dropped: patterns are relative to the context root;
- Go ``filepath.Match`` syntax — ``*`` (any run of characters but ``/``), ``?`` (one
  character but ``/``), ``[a-z]`` / ``[^a-z]`` classes, ``\\`` escapes — plus ``**``,
  any number of directories, zero included (``**/*.go`` matches ``a.go`` too);
- ``!pattern`` re-includes what an earlier pattern excluded; the last pattern that
  matches a path decides;
- a pattern that matches a directory matches everything under it (``dir`` excludes
  ``dir/x``), so a path is tested together with each of its parent directories.

One deliberate difference: a negated class never matches ``/``, like ``*`` and ``?``
(patternmatcher's regexp lets ``[^a]`` match a separator).

The Containerfile and the ignore file are sent even when excluded; that is the
executor's business, as is reading only what it needs.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lamina.errors import InvalidInput

__all__ = ["IgnoreMatcher"]

IGNORE_FILES = (".containerignore", ".dockerignore")


@dataclass(frozen=True)
class _Pattern:
    text: str  # cleaned, without the "!"
    exclusion: bool  # a "!" pattern: re-includes
    regex: re.Pattern[str]
    parts: tuple[re.Pattern[str] | None, ...]  # per component; None for one with **


class IgnoreMatcher:
    """Decides which context paths are excluded from a build."""

    def __init__(self, patterns: Sequence[_Pattern] = ()) -> None:
        self._patterns = tuple(patterns)
        self._has_exclusions = any(p.exclusion for p in self._patterns)
        # Per directory: which patterns match it or one of its parents.  A walk asks
        # about every file of a directory, so each directory is matched only once.
        self._dir_hits: dict[str, tuple[bool, ...]] = {}

    @classmethod
    def from_context(cls, context: Path, containerfile_name: str | None = None) -> IgnoreMatcher:
        """The matcher for a build context.

        A ``<Containerfile>.containerignore`` or ``<Containerfile>.dockerignore`` beside
        the Containerfile wins (BuildKit's per-Dockerfile ignore file), then the
        context's ``.containerignore``, then its ``.dockerignore``; with none of them
        nothing is excluded.
        """
        candidates: list[Path] = []
        if containerfile_name:
            containerfile = Path(containerfile_name)
            if not containerfile.is_absolute():
                containerfile = context / containerfile
            candidates += [containerfile.with_name(containerfile.name + s) for s in IGNORE_FILES]
        candidates += [context / name for name in IGNORE_FILES]
        for candidate in candidates:
            if candidate.is_file():
                try:
                    text = candidate.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as err:
                    raise InvalidInput(f"{candidate}: cannot read: {err}") from None
                # Lines end at \n only (Go's bufio.ScanLines); \r goes with the trim.
                return cls.from_lines(text.split("\n"), source=candidate.name)
        return cls()

    @classmethod
    def from_lines(cls, lines: Iterable[str], source: str = ".dockerignore") -> IgnoreMatcher:
        """A matcher from the lines of an ignore file (``source`` names it in errors)."""
        patterns = []
        for number, line in enumerate(lines, 1):
            if number == 1:
                line = line.removeprefix("\ufeff")
            if line.startswith("#"):
                continue
            line = line.strip()
            if not line:
                continue
            exclusion = line.startswith("!")
            if exclusion:
                line = line[1:].strip()
                if not line:
                    raise InvalidInput(f'{source}:{number}: "!" must be followed by a pattern')
            text = _clean(line)
            if len(text) > 1 and text.startswith("/"):
                text = text[1:]
            try:
                patterns.append(_compile(text, exclusion))
            except ValueError as err:
                raise InvalidInput(f"{source}:{number}: bad pattern {line!r}: {err}") from None
        return cls(patterns)

    @property
    def patterns(self) -> tuple[str, ...]:
        """The cleaned patterns, ``!`` kept, in order."""
        return tuple(("!" if p.exclusion else "") + p.text for p in self._patterns)

    def matches(self, rel_path: str) -> bool:
        """Whether ``rel_path`` (posix, relative to the context root) is excluded."""
        path = _clean(rel_path).lstrip("/")
        if not self._patterns or path in ("", "."):
            return False
        parent, _, _ = path.rpartition("/")
        inherited = self._hits(parent)
        matched = False
        for i, pattern in enumerate(self._patterns):
            # The last pattern matching the path or a parent of it decides.
            if pattern.exclusion == matched and (inherited[i] or pattern.regex.fullmatch(path)):
                matched = not pattern.exclusion
        return matched

    def _hits(self, directory: str) -> tuple[bool, ...]:
        """For each pattern, whether it matches ``directory`` or one of its parents."""
        # Walk up to the nearest directory already known, then down again.
        missing: list[str] = []
        while directory and directory not in self._dir_hits:
            missing.append(directory)
            directory = directory.rpartition("/")[0]
        hits = self._dir_hits[directory] if directory else (False,) * len(self._patterns)
        for below in reversed(missing):
            hits = tuple(
                hit or bool(p.regex.fullmatch(below))
                for hit, p in zip(hits, self._patterns, strict=True)
            )
            self._dir_hits[below] = hits
        return hits

    def may_match_inside(self, rel_dir: str) -> bool:
        """Whether a ``!`` pattern could re-include something below ``rel_dir``.

        When :meth:`matches` excludes a directory and this is False, a walker can skip
        the whole directory.  It may say True needlessly (patterns with ``**``), never
        False wrongly: a path below an excluded directory can only come back through a
        ``!`` pattern matching a path below that directory.
        """
        if not self._has_exclusions:
            return False
        path = _clean(rel_dir).lstrip("/")
        parts = [] if path in ("", ".") else path.split("/")
        return any(p.exclusion and _may_match_below(p.parts, parts) for p in self._patterns)


def _may_match_below(pattern: Sequence[re.Pattern[str] | None], parts: Sequence[str]) -> bool:
    """Whether the pattern's components could match some path under ``parts``."""
    for i, part in enumerate(parts):
        if i >= len(pattern):
            return False  # the pattern stops above the directory's depth
        component = pattern[i]
        if component is None:
            return True  # ** can reach any depth
        if not component.fullmatch(part):
            return False
    return len(pattern) > len(parts)


def _clean(path: str) -> str:
    """Go's ``filepath.Clean`` for ``/`` paths: normpath, but ``//a`` is ``/a``."""
    cleaned = posixpath.normpath(path) if path else "."
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def _compile(text: str, exclusion: bool) -> _Pattern:
    parts = tuple(
        None if "**" in component else re.compile(_translate(component))
        for component in _components(text)
    )
    return _Pattern(text, exclusion, re.compile(_translate(text), re.DOTALL), parts)


def _components(text: str) -> list[str]:
    """``text`` split at its separators (not an escaped ``/`` or one in a class)."""
    out: list[str] = []
    start = i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":
            end = _class_end(text, i)
            i = end if end > 0 else i + 1
            continue
        if ch == "/":
            out.append(text[start:i])
            start = i + 1
        i += 1
    out.append(text[start:])
    return out


def _translate(pattern: str) -> str:
    """A Go ``filepath.Match`` pattern plus ``**`` as a regular expression."""
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1  # "**/" is "**": zero or more directories
                # "**" at the end matches everything; elsewhere any directories.
                out.append(".*" if i == n else "(?:.*/)?")
            else:
                out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = _class_end(pattern, i - 1)
            if end < 0:
                raise ValueError("unterminated character class")
            out.append(_translate_class(pattern[i : end - 1]))
            i = end
        elif ch == "\\":
            if i == n:
                raise ValueError("trailing backslash")
            out.append(re.escape(pattern[i]))
            i += 1
        else:
            out.append(re.escape(ch))
    return "".join(out)


def _class_end(pattern: str, start: int) -> int:
    """The index after the ``]`` closing the class opened at ``start``, or -1.

    A ``]`` right after ``[`` or ``[^`` is a member, as in Go's filepath.Match.
    """
    i = start + 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    first = True
    while i < len(pattern):
        ch = pattern[i]
        if ch == "]" and not first:
            return i + 1
        i += 2 if ch == "\\" else 1
        first = False
    return -1


def _translate_class(body: str) -> str:
    negate = body.startswith("^")
    if negate:
        body = body[1:]
    members: list[str] = []
    chars: list[str] = []
    i = 0
    while i < len(body):  # unescape: Go allows \c for any c inside a class
        if body[i] == "\\":
            if i + 1 >= len(body):
                raise ValueError("trailing backslash in character class")
            chars.append("\\" + body[i + 1])
            i += 2
        else:
            chars.append(body[i])
            i += 1
    j = 0
    while j < len(chars):
        lo = chars[j][-1]
        if j + 2 < len(chars) and chars[j + 1] == "-":
            hi = chars[j + 2][-1]
            if lo > hi:
                raise ValueError(f"bad range {lo}-{hi}")
            members.append(f"{re.escape(lo)}-{re.escape(hi)}")
            j += 3
        else:
            members.append(re.escape(lo))
            j += 1
    if negate:
        return f"[^/{''.join(members)}]"
    return f"[{''.join(members)}]"
