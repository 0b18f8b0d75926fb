"""``lamina build --secret`` and ``--ssh``: what RUN steps may ask for by id.

``--secret id=ID[,src=FILE|,env=VAR][,type=file|env]`` as ``docker buildx build
--secret`` reads it (buildx ``build/secrets.go``): without src and env the secret is
the environment variable ID if set, else the file ID; ``source`` is a synonym of
``src``.  ``--ssh ID[=SOCKET]`` as ``--ssh``: an id without a socket (``default``)
means ``$SSH_AUTH_SOCK``; lamina forwards an agent socket (not key files).

A secret's bytes are read only when a step mounts it; they reach the step's secret file
or variable and nothing else: not a layer, not a cache key, not the history.
"""

from __future__ import annotations

import csv
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from lamina.errors import InvalidInput, NotFound

__all__ = ["SSHSource", "SecretSource", "parse_secret", "parse_ssh"]


@dataclass(frozen=True)
class SecretSource:
    """Where the secret ``id`` comes from: a file or an environment variable."""

    id: str
    path: Path | None = None
    env: str | None = None

    def read(self) -> bytes:
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise NotFound(f"secret {self.id}: environment variable {self.env} is not set")
            return os.fsencode(value)
        assert self.path is not None
        try:
            return self.path.read_bytes()
        except OSError as e:
            raise NotFound(f"secret {self.id}: cannot read {self.path}: "
                           f"{e.strerror or e}") from None


@dataclass(frozen=True)
class SSHSource:
    """An ssh agent socket forwarded to steps that mount ssh ``id``."""

    id: str
    socket: Path


def parse_secret(text: str) -> SecretSource:
    """One ``--secret`` value (see the module docstring)."""
    try:
        fields = next(csv.reader([text]), [])
    except csv.Error as e:
        raise InvalidInput(f"--secret {text}: {e}") from None
    values: dict[str, str] = {}
    for field in fields:
        key, eq, value = field.partition("=")
        key = key.strip().lower()
        if not eq:
            raise InvalidInput(f"--secret {text}: {field!r} must be key=value")
        if key == "source":
            key = "src"
        if key not in ("id", "src", "env", "type"):
            raise InvalidInput(f"--secret {text}: unexpected key {key!r} (id, src, env, type)")
        values[key] = value
    ident = values.get("id", "")
    if not ident:
        raise InvalidInput(f"--secret {text}: id is required: --secret id=ID,src=FILE")
    kind = values.get("type")
    if kind not in (None, "file", "env"):
        raise InvalidInput(f"--secret {text}: type must be file or env, not {kind!r}")
    src = values.get("src")
    env = values.get("env")
    if src and env:
        raise InvalidInput(f"--secret {text}: src and env cannot both be set")
    if kind == "env" or env:
        return SecretSource(ident, env=env or src or ident)
    if kind is None and not src and ident in os.environ:
        return SecretSource(ident, env=ident)
    path = Path(src or ident).expanduser()
    if not path.is_file():
        raise NotFound(f"--secret {text}: no such file {path}")
    return SecretSource(ident, path=path.resolve())


def parse_ssh(text: str) -> SSHSource:
    """One ``--ssh`` value: ``ID[=SOCKET]``; ``default`` without a socket is
    ``$SSH_AUTH_SOCK``."""
    ident, eq, where = text.partition("=")
    ident = ident.strip()
    if not ident:
        raise InvalidInput(f"--ssh {text}: an id is required: --ssh default[=SOCKET]")
    if not eq:   # buildx: an id without paths is the agent of $SSH_AUTH_SOCK
        where = os.environ.get("SSH_AUTH_SOCK", "")
        if not where:
            raise InvalidInput(f"--ssh {text}: SSH_AUTH_SOCK is not set; give the agent's "
                               f"socket: --ssh {ident}=/path/to/agent.sock")
    if "," in where:
        raise InvalidInput(f"--ssh {text}: lamina forwards one agent socket per id, not "
                           "key files")
    path = Path(where).expanduser()
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise NotFound(f"--ssh {text}: {path}: {e.strerror or e}") from None
    if not stat.S_ISSOCK(mode):
        raise InvalidInput(f"--ssh {text}: {path} is not a socket (lamina forwards an ssh "
                           "agent's socket, not key files)")
    return SSHSource(ident, path.resolve())
