"""Variable expansion and word splitting, as a Containerfile does it.

The Dockerfile reference ("Environment replacement") documents a small shell-like
language; this module implements it and nothing more — no command substitution, no
globbing, no arithmetic:

    $name  ${name}                 the value, or "" when unset
    ${name:-word}  ${name-word}    word if name is unset or empty / only if unset
    ${name:+word}  ${name+word}    word if name is set and non-empty / set at all, else ""
    ${name:?word}  ${name?word}    the value, or an error with word (unset or empty / unset)
    ${name#pat} ${name##pat}       the value without the shortest / longest prefix matching pat
    ${name%pat} ${name%%pat}       the value without the shortest / longest suffix matching pat
    ${name/pat/repl} ${name//pat/repl}   replace the first / every match of pat
    '...'                          literal, quotes removed
    "..."                          quotes removed; $ expands; the escape character escapes
                                   only " $ and itself, and is kept before anything else
    \\c  (or `c with `# escape=``)  c literally, outside quotes; an escape at the very end
                                   is dropped

``word`` may itself hold expansions and quotes (``${a:-${b:-x}}``).  Names are letters,
digits and ``_``; ``$1`` and the special parameters (``$@ $* $# $? $- $$ $! $0``) read
variables of that name, which a build never sets, so they expand to "" as in BuildKit.

Which instructions expand is the executor's decision, not this module's.  Per the
reference: ADD, COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR (and ARG
defaults, as BuildKit does); ONBUILD does not (its trigger expands when it runs, in the
child build).  RUN, CMD, ENTRYPOINT, SHELL and HEALTHCHECK are never expanded by the
builder: a shell form reaches ``sh -c`` verbatim and the shell expands it at run time.

Errors are :class:`lamina.errors.InvalidInput` naming the cause and the word; the caller
adds the file and line (``err.context(ins.location)``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from lamina.errors import InvalidInput

__all__ = ["expand", "expand_heredoc", "expand_words"]

# POSIX special parameters (XCU 2.5.2); BuildKit reads them as one-character names.
_SPECIAL = frozenset("@*#?-$!0")


def expand(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """``word`` with variables expanded and quotes and escapes removed, as one string.

    Whitespace is kept as written: ``/my  dir`` stays one value (BuildKit ProcessWord).
    """
    return _Lexer(word, env, escape).run().text()


def expand_heredoc(body: str, env: Mapping[str, str]) -> str:
    """A COPY here-document's body with ``$VAR`` expanded: quotes are plain characters
    and ``\\`` escapes the next one (BuildKit dispatch ``ExpandRaw``: a lexer with
    ``SkipProcessQuotes`` and the default escape, whatever ``# escape=`` says)."""
    return _Lexer(body, env, "\\", quotes=False).run().text()


def expand_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """``text`` expanded and split into words at unquoted whitespace, like the shell.

    Quotes group words (``"a b"`` is one word) and so do escaped blanks (``a\\ b``);
    the value of an unquoted variable is split at its whitespace.  As in BuildKit, a
    word that ends up empty (``""``) is dropped.
    """
    return _Lexer(text, env, escape).run().words()


class _Result:
    """The text being produced, kept both whole and split into words."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._words: list[str] = []
        self._word: list[str] = []

    def literal(self, ch: str) -> None:
        """An unquoted character as written: blanks separate words."""
        self._text.append(ch)
        self._split_char(ch)

    def raw(self, s: str) -> None:
        """Quoted or escaped text: part of the current word, blanks included."""
        self._text.append(s)
        self._word.append(s)

    def expansion(self, s: str) -> None:
        """An unquoted expansion's value: split at its blanks (field splitting)."""
        self._text.append(s)
        for ch in s:
            self._split_char(ch)

    def _split_char(self, ch: str) -> None:
        if not ch.isspace():
            self._word.append(ch)
        elif self._word:
            self._end_word()

    def _end_word(self) -> None:
        word = "".join(self._word)
        self._word = []
        if word:
            self._words.append(word)

    def text(self) -> str:
        return "".join(self._text)

    def words(self) -> list[str]:
        self._end_word()
        return self._words


class _Lexer:
    def __init__(self, source: str, env: Mapping[str, str], escape: str,
                 quotes: bool = True) -> None:
        if escape not in ("\\", "`"):
            raise ValueError(f"escape must be \\ or `, not {escape!r}")
        self.quotes = quotes
        self.src = source
        self.env = env
        self.esc = escape
        self.pos = 0

    def error(self, cause: str) -> InvalidInput:
        return InvalidInput(f"{cause} in {self.src!r}")

    def peek(self) -> str:
        return self.src[self.pos] if self.pos < len(self.src) else ""

    def take(self) -> str:
        ch = self.peek()
        self.pos += 1 if ch else 0
        return ch

    def run(self, stop: str = "") -> _Result:
        """Read up to ``stop`` (consumed) or the end of the source when ``stop`` is ""."""
        out = _Result()
        while self.pos < len(self.src):
            ch = self.src[self.pos]
            if stop and ch == stop:
                self.pos += 1
                return out
            if ch == "'" and self.quotes:
                out.raw(self.single_quoted())
            elif ch == '"' and self.quotes:
                out.raw(self.double_quoted())
            elif ch == "$":
                out.expansion(self.dollar())
            else:
                self.pos += 1
                if ch == self.esc:
                    # An escape outside quotes takes the next character literally;
                    # one at the very end is dropped (BuildKit shell/lex.go).
                    if self.pos < len(self.src):
                        out.raw(self.take())
                else:
                    out.literal(ch)
        if stop:
            raise self.error(f"missing {stop!r}")
        return out

    def single_quoted(self) -> str:
        # Everything up to the next ' is literal; nothing escapes inside (sh, XCU 2.2.2).
        self.pos += 1
        end = self.src.find("'", self.pos)
        if end < 0:
            raise self.error("unterminated single quote")
        text = self.src[self.pos : end]
        self.pos = end + 1
        return text

    def double_quoted(self) -> str:
        # XCU 2.2.3: $ expands; the escape quotes only " $ and itself, else stays.
        self.pos += 1
        out: list[str] = []
        while True:
            ch = self.peek()
            if not ch:
                raise self.error("unterminated double quote")
            if ch == '"':
                self.pos += 1
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            self.pos += 1
            if ch == self.esc and self.peek() in ('"', "$", self.esc) and self.peek():
                ch = self.take()
            out.append(ch)

    def name(self) -> str:
        start = self.pos
        ch = self.peek()
        if ch.isdecimal():
            while self.peek().isdecimal():
                self.pos += 1
            return self.src[start : self.pos]
        if ch and ch in _SPECIAL:
            self.pos += 1
            return ch
        while (c := self.peek()) and (c.isalnum() or c == "_"):
            self.pos += 1
        return self.src[start : self.pos]

    def dollar(self) -> str:
        self.pos += 1  # the $
        if self.peek() != "{":
            name = self.name()
            # A $ not followed by a name is a literal $ ("cost: 5$").
            return self.env.get(name, "") if name else "$"
        self.pos += 1  # the {
        if not self.peek():
            raise self.error("missing '}'")
        if self.peek() in "{}:":
            raise self.error("bad substitution")
        name = self.name()
        op = self.take()
        if op == "}":
            return self.env.get(name, "")
        if not op:
            raise self.error("missing '}'")
        if not name:
            raise self.error("bad substitution")
        colon = op == ":"
        if colon:
            op = self.take()
            if op not in ("-", "+", "?"):
                raise self.error(f"unsupported modifier ({op or 'end'}) in substitution")
        value = self.env.get(name)
        if op in ("-", "+", "?"):
            word = self.run("}").text()
            # With the colon, an empty value counts as unset (XCU 2.6.2).
            is_set = value is not None and (not colon or value != "")
            if op == "-":
                return value if is_set and value is not None else word
            if op == "+":
                return word if is_set else ""
            if is_set and value is not None:
                return value
            raise InvalidInput(f"{name}: {word or _unset_message(colon)}")
        if op in ("#", "%"):
            longest = self.peek() == op
            if longest:
                self.pos += 1
            pattern = self.pattern("}")
            return _trim(value or "", pattern, prefix=op == "#", longest=longest)
        if op == "/":
            every = self.peek() == "/"
            if every:
                self.pos += 1
            pattern = self.pattern("/}")
            replacement = "" if self.src[self.pos - 1] == "}" else self.run("}").text()
            return _replace(value or "", pattern, replacement, every=every)
        raise self.error("bad substitution")

    def pattern(self, stops: str) -> str:
        """A glob up to one of ``stops`` (consumed), as a regex.

        Quoted and escaped characters match literally; ``*`` ``?`` ``[...]`` are
        globs (XCU 2.13); expansions inside are literal text.
        """
        out: list[str] = []
        while True:
            ch = self.peek()
            if not ch:
                raise self.error("missing '}'")
            if ch in stops:
                self.pos += 1
                return "".join(out)
            if ch == "'":
                out.append(re.escape(self.single_quoted()))
            elif ch == '"':
                out.append(re.escape(self.double_quoted()))
            elif ch == "$":
                out.append(re.escape(self.dollar()))
            else:
                self.pos += 1
                if ch == self.esc:
                    out.append(re.escape(self.take()))
                elif ch == "*":
                    out.append(".*")
                elif ch == "?":
                    out.append(".")
                elif ch == "[":
                    out.append(self.bracket())
                else:
                    out.append(re.escape(ch))

    def bracket(self) -> str:
        # [abc] [a-z] [!a] [^a]; an unclosed [ is a literal [ (XCU 2.13.1).
        end = self.src.find("]", self.pos + 1)
        if end < 0:
            return re.escape("[")
        body = self.src[self.pos : end]
        self.pos = end + 1
        negate = body[:1] in ("!", "^")
        if negate:
            body = body[1:]
        parts = []
        i = 0
        while i < len(body):
            if i + 2 < len(body) and body[i + 1] == "-":
                parts.append(f"{re.escape(body[i])}-{re.escape(body[i + 2])}")
                i += 3
            else:
                parts.append(re.escape(body[i]))
                i += 1
        return f"[{'^' if negate else ''}{''.join(parts)}]"


def _unset_message(colon: bool) -> str:
    return "is not allowed to be unset or empty" if colon else "is not allowed to be unset"


def _trim(value: str, pattern: str, *, prefix: bool, longest: bool) -> str:
    regex = re.compile(pattern, re.DOTALL)
    cuts = range(len(value) + 1)
    if prefix:
        order = reversed(cuts) if longest else iter(cuts)
        for n in order:
            if regex.fullmatch(value, 0, n):
                return value[n:]
    else:
        order = iter(cuts) if longest else reversed(cuts)
        for n in order:
            if regex.fullmatch(value, n):
                return value[:n]
    return value


def _replace(value: str, pattern: str, replacement: str, *, every: bool) -> str:
    if not pattern:
        return value
    # Shell patterns match the longest text at the leftmost position; a greedy regex
    # does the same for the globs we produce.
    regex = re.compile(pattern, re.DOTALL)
    return regex.sub(lambda _m: replacement, value, count=0 if every else 1)
