"""Go's ``path.Match`` / ``filepath.Match`` patterns, as regular expressions: Docker
matches COPY sources (``build.context``) and ``images --filter reference=`` with them."""

from __future__ import annotations

import re
from functools import lru_cache

from lamina.errors import InvalidInput


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """Go filepath.Match: ``*`` and ``?`` never cross ``/``; ``[...]`` classes; ``\\``
    escapes."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                raise InvalidInput(f"bad pattern {pattern!r}: unterminated [")
            body = pattern[i + 1 : j]
            if body.startswith("^"):
                body = "!" + body[1:]
            out.append("[" + ("^" + re.escape(body[1:]) if body.startswith("!")
                              else re.escape(body)).replace("\\-", "-") + "]")
            i = j
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))

