"""What RUN and COPY/ADD make of their here-documents ("Here-Documents" in the
Dockerfile reference; BuildKit dockerfile2llb/convert.go ``dispatchRun`` and
convert_copy.go ``dispatchCopy``).

RUN, three cases, as BuildKit decides them:

- the command is one heredoc word (``RUN <<EOF``) and the body starts with ``#!``: the
  body is a script file, mode 0755, mounted read-only at ``/dev/pipes/<name>`` (outside
  the rootfs, so in no layer) and run as ``<shell> /dev/pipes/<name>``;
- the command is one heredoc word, no ``#!``: the body is the shell's command string
  (``/bin/sh -c "<body>"``), so it works whatever heredocs the shell knows;
- anything else (``RUN <<A cat /dev/stdin && <<B ...``, ``RUN python3 <<EOF``): the line
  and each body with its terminator are given to the shell, which reads the heredocs.

The builder never expands ``$VAR`` in RUN's bodies (the shell does, or does not for a
quoted delimiter, in the last case).  COPY/ADD write each heredoc named as a source as a
file named by its delimiter, mode 0644, its body expanded unless the delimiter was
quoted.  The bodies are part of the step's cache key in every case.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lamina.build.dockerfile import Heredoc, Instruction, heredoc_word
from lamina.build.expand import expand_heredoc
from lamina.errors import InvalidInput

__all__ = ["InlineFile", "RunCommand", "inline_sources", "run_command"]

PIPES = "/dev/pipes"  # where BuildKit mounts a RUN heredoc script


@dataclass(frozen=True)
class InlineFile:
    """A file made from a heredoc: its name (the delimiter), bytes and mode."""

    name: str
    data: bytes
    mode: int

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def write(self, directory: Path, mtime: int) -> Path:
        """The file under ``directory`` (made here), with its mode and ``mtime``."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.mode)
        with os.fdopen(fd, "wb") as f:
            f.write(self.data)
        os.chmod(path, self.mode)
        os.utime(path, (mtime, mtime))
        return path


@dataclass(frozen=True)
class RunCommand:
    argv: list[str]
    script: InlineFile | None  # to mount at PIPES/<name>, read-only


def _file_name(doc: Heredoc, what: str) -> str:
    if "/" in doc.name or doc.name in (".", ".."):
        raise InvalidInput(f"{what}: heredoc name {doc.name!r} cannot name a file")
    return doc.name


def run_command(ins: Instruction, shell: Sequence[str]) -> RunCommand:
    """RUN's argv (and script file) from a shell-form RUN with heredocs."""
    line = ins.args[0]
    found = heredoc_word(line)
    if found is None:
        # The shell reads the heredocs itself: give it the line and the bodies as written.
        text = line + "".join(f"\n{doc.content}{doc.name}" for doc in ins.heredocs)
        return RunCommand([*shell, text], None)
    doc = ins.heredocs[0]
    body = doc.body
    if body.startswith("#!"):
        name = _file_name(doc, "RUN")
        return RunCommand([*shell, f"{PIPES}/{name}"], InlineFile(name, body.encode(), 0o755))
    return RunCommand([*shell, body], None)


def inline_sources(ins: Instruction, words: Sequence[str],
                   env: Mapping[str, str]) -> list[InlineFile]:
    """COPY/ADD's heredoc sources among ``words`` (unexpanded), in order, as files."""
    docs = {doc.name: doc for doc in ins.heredocs}
    out = []
    for word in words:
        found = heredoc_word(word)
        if found is None:
            continue
        doc = docs.get(found[2])
        if doc is None:  # cannot happen: the parser read a body for every such word
            raise InvalidInput(f"{ins.cmd}: no heredoc named {found[2]!r}")
        body = doc.body
        if found[3]:
            body = expand_heredoc(body, env)
        out.append(InlineFile(_file_name(doc, ins.cmd), body.encode(), 0o644))
    return out
