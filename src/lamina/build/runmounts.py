"""``RUN --mount=...`` and ``RUN --network=...``: the flags' text in, checked values out.

The option names and rules are BuildKit's Dockerfile frontend's (Dockerfile reference,
"RUN --mount"; BuildKit ``frontend/dockerfile/instructions/commands_runmount.go``):

- the value is one CSV record of ``key=value`` fields; ``type`` defaults to ``bind``;
- ``ro``/``readonly`` and ``rw``/``readwrite`` may stand alone (meaning true), and so
  may ``required`` for secret and ssh mounts; every other key needs a value;
- ``src``/``source``, ``dst``/``destination``/``target`` are synonyms;
- ``mode``/``uid``/``gid`` only for cache, secret and ssh mounts; ``sharing`` only for
  cache mounts; ``size`` only for tmpfs; ``env`` only for secrets;
- read-only by default, except cache and tmpfs mounts;
- every value is expanded with the build args and ENV visible to the RUN.

Defaults filled in here, as BuildKit's ``dispatchRunMounts`` fills them: a cache's id is
its target; a secret's id is its source, else the base name of its target, and its
target ``/run/secrets/<id>`` (none when it is only exposed as ``env``), mode 0400; an
ssh mount's id is ``default``, its target ``/run/buildkit/ssh_agent.<n>``, mode 0600.
"""

from __future__ import annotations

import csv
import difflib
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lamina.errors import InvalidInput

__all__ = ["MOUNT_TYPES", "NETWORKS", "MountSpec", "parse_mount", "parse_network"]

MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
NETWORKS = ("default", "none", "host")
SHARING = ("shared", "private", "locked")
_KEYS = ("type", "from", "source", "src", "target", "dst", "destination", "readonly", "ro",
         "readwrite", "rw", "required", "size", "id", "sharing", "mode", "uid", "gid", "env")
_FILE_INFO = ("cache", "secret", "ssh")   # the types that take mode/uid/gid


@dataclass(frozen=True)
class MountSpec:
    """One ``--mount``, defaults filled in (see the module docstring)."""

    type: str
    target: str            # absolute container path ("" only for an env-only secret)
    source: str = ""       # path in ``from`` (bind, cache) or the secret's file id
    from_: str = ""        # stage, image or "" (the context; for a cache: empty dir)
    readonly: bool = False
    id: str = ""           # cache, secret, ssh
    sharing: str = "shared"
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None   # tmpfs, bytes
    env: str = ""          # secret: also (or only) exposed as this variable
    required: bool = False

    def key(self) -> dict[str, Any]:
        """What the step's cache key takes from this mount: the whole specification,
        never what the mount holds (a cache's files, a secret's bytes)."""
        return {k: v for k, v in self.__dict__.items() if v not in ("", None)}


def _bool(key: str, value: str) -> bool:
    low = value.lower()
    if low in ("1", "t", "true"):
        return True
    if low in ("0", "f", "false"):
        return False
    raise InvalidInput(f"--mount: {key}={value!r} must be true or false")


def _int(key: str, value: str, base: int = 10) -> int:
    try:
        number = int(value, base)
    except ValueError:
        what = "an octal mode" if base == 8 else "a number"
        raise InvalidInput(f"--mount: {key}={value!r} must be {what}") from None
    if not 0 <= number < 2**32:
        raise InvalidInput(f"--mount: {key}={value!r} is out of range")
    return number


_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3}


def _size(value: str) -> int:
    # go-units RAMInBytes: binary units whatever the spelling.
    text = value.strip().lower()
    digits = text.rstrip("kmgib")
    unit = text[len(digits):]
    try:
        number = float(digits)
    except ValueError:
        number = -1.0
    if number < 0 or unit not in _SIZE_UNITS:
        raise InvalidInput(f"--mount: size={value!r} is not a size like 64m")
    return int(number * _SIZE_UNITS[unit])


def _suggest(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _fields(text: str) -> list[str]:
    try:
        rows = list(csv.reader([text]))
    except csv.Error as e:
        raise InvalidInput(f"--mount={text}: {e}") from None
    return rows[0] if rows else []


def parse_mount(text: str, expand: Callable[[str], str] = lambda s: s,
                index: int = 0) -> MountSpec:
    """One ``--mount`` value; ``expand`` expands a field's value (build args, ENV).
    ``index`` is the mount's place among the step's ssh mounts (its default target)."""
    fields: dict[str, Any] = {"type": "bind"}
    ro_auto = True
    for field in _fields(text):
        key, eq, raw = field.partition("=")
        key = key.strip().lower()
        kind = fields["type"]
        if not eq:
            if key in ("readonly", "ro", "readwrite", "rw"):
                fields["readonly"] = key in ("readonly", "ro")
                ro_auto = False
            elif key == "required" and kind in ("secret", "ssh"):
                fields["required"] = True
            elif key == "required":
                raise InvalidInput(f"--mount: unexpected key 'required' for mount type "
                                   f"'{kind}'")
            else:
                raise InvalidInput(f"--mount: invalid field {field!r}: must be a key=value "
                                   "pair")
            continue
        value = expand(raw)
        if key == "type":
            value = value.lower()
            if value not in MOUNT_TYPES:
                raise InvalidInput(f"--mount: unsupported mount type {value!r}"
                                   f"{_suggest(value, MOUNT_TYPES)}; use one of "
                                   f"{', '.join(MOUNT_TYPES)}")
            fields["type"] = value
        elif key == "from":
            fields["from_"] = value
        elif key in ("source", "src"):
            fields["source"] = value
        elif key in ("target", "dst", "destination"):
            fields["target"] = value
        elif key in ("readonly", "ro"):
            fields["readonly"] = _bool(key, value)
            ro_auto = False
        elif key in ("readwrite", "rw"):
            fields["readonly"] = not _bool(key, value)
            ro_auto = False
        elif key == "required":
            if kind not in ("secret", "ssh"):
                raise InvalidInput(f"--mount: unexpected key 'required' for mount type "
                                   f"'{kind}'")
            fields["required"] = _bool(key, value)
        elif key == "size":
            if kind != "tmpfs":
                raise InvalidInput(f"--mount: unexpected key 'size' for mount type '{kind}'")
            fields["size"] = _size(value)
        elif key == "id":
            fields["id"] = value
        elif key == "sharing":
            if value.lower() not in SHARING:
                raise InvalidInput(f"--mount: unsupported sharing value {value!r}; use "
                                   "shared, private or locked")
            fields["sharing"] = value.lower()
        elif key == "mode":
            fields["mode"] = _int(key, value, 8)
        elif key in ("uid", "gid"):
            fields[key] = _int(key, value)
        elif key == "env":
            fields["env"] = value
        else:
            raise InvalidInput(f"--mount: unexpected key {key!r} in {field!r}"
                               f"{_suggest(key, _KEYS)}")
    return _finish(fields, ro_auto, text, index)


def _finish(fields: dict[str, Any], ro_auto: bool, text: str, index: int) -> MountSpec:
    kind = str(fields["type"])
    if kind not in _FILE_INFO:
        for key in ("mode", "uid", "gid"):
            if key in fields:
                raise InvalidInput(f"--mount: {key} not allowed for {kind!r} type mounts")
    if "sharing" in fields and kind != "cache":
        raise InvalidInput(f"--mount: sharing is only for cache mounts, not {kind!r}")
    if "env" in fields and kind != "secret":
        raise InvalidInput(f"--mount: env is only for secret mounts, not {kind!r}")
    if ro_auto:
        fields["readonly"] = kind not in ("cache", "tmpfs")
    target = str(fields.get("target", ""))
    if kind == "secret":
        if fields.get("from_"):
            raise InvalidInput("--mount: a secret mount takes no from")
        source = str(fields.get("source", ""))
        if source and fields.get("id"):
            raise InvalidInput("--mount: a secret mount takes id or source, not both")
        ident = str(fields.get("id") or source or (posixpath.basename(target) if target
                                                    else ""))
        if not ident:
            raise InvalidInput(f"--mount={text}: a secret mount needs an id (or a target)")
        fields["id"], fields["source"] = ident, ""
        if not target and not fields.get("env"):
            target = "/run/secrets/" + posixpath.basename(ident)
        fields.setdefault("mode", 0o400)
    elif kind == "ssh":
        fields["id"] = fields.get("id") or "default"
        target = target or f"/run/buildkit/ssh_agent.{index}"
        fields.setdefault("mode", 0o600)
    elif not target:
        raise InvalidInput(f"--mount={text}: a {kind} mount needs a target")
    elif kind == "cache":
        fields["id"] = fields.get("id") or target
    elif kind in ("bind", "tmpfs") and "id" in fields:
        raise InvalidInput(f"--mount: id is not for {kind} mounts")
    if target and not target.startswith("/"):
        # BuildKit makes a relative target relative to the working directory; the
        # executor does the same (it knows WORKDIR), so only keep it tidy here.
        target = posixpath.normpath(target)
    elif target:
        target = posixpath.normpath(target)
        if target == "/":
            raise InvalidInput("--mount: cannot mount on / (the root filesystem)")
    fields["target"] = target
    return MountSpec(**fields)


def parse_network(value: str) -> str:
    """``RUN --network`` (Dockerfile reference, "RUN --network")."""
    low = value.lower()
    if low not in NETWORKS:
        raise InvalidInput(f"--network: unsupported network mode {value!r}; use "
                           f"{', '.join(NETWORKS)}")
    return low
