"""Names in the registry API, checked before they are used anywhere.

Repository names follow distribution-spec 1.1 ``<name>``; references are a tag
(``[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}``) or a digest (sha256/sha512, ``lamina.digest``).
A name is only ever a key in SQLite and part of a store tag string: the filesystem sees
digests, never names.

The repository namespace *is* the store's tags under the default registry, so that
``lamina serve`` serves what ``lamina build -t demo/a`` made and a push lands as a local
image: repository ``demo/a`` tag ``latest`` ↔ store tag ``docker.io/demo/a:latest``.  A
one-component name is Docker's official-image shorthand: ``busybox`` is
``library/busybox`` (``docker.io/library/busybox``), as ``docker pull`` treats it.
"""

from __future__ import annotations

import re

from lamina.digest import Digest
from lamina.errors import InvalidReference
from lamina.image.reference import DEFAULT_REGISTRY, MAX_NAME
from lamina.server.errors import RegistryHTTPError, digest_invalid

# distribution-spec 1.1 "Pulling manifests": <name> grammar.
_NAME = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
# A repository must also be a valid store reference: "docker.io/" + name <= 255 chars.
MAX_REPO = MAX_NAME - len(DEFAULT_REGISTRY) - 1
_STORE_PREFIX = DEFAULT_REGISTRY + "/"


def check_name(name: str) -> str:
    """The canonical repository for ``name`` (``busybox`` → ``library/busybox``), or
    NAME_INVALID."""
    if len(name) > MAX_REPO or not _NAME.fullmatch(name):
        raise RegistryHTTPError(400, "NAME_INVALID", f"invalid repository name {name[:300]!r}",
                                {"name": name[:300]})
    return name if "/" in name else f"library/{name}"


def parse_digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except InvalidReference as e:
        raise digest_invalid(str(e)[:300]) from None


def is_digest_ref(reference: str) -> bool:
    """A manifest reference with ':' can only be a digest (tags have no ':')."""
    return ":" in reference


def store_tag(repo: str, tag: str) -> str:
    return f"{_STORE_PREFIX}{repo}:{tag}"


def store_tag_range(repo: str) -> tuple[str, str]:
    """[lo, hi) bounds of the store tag names of ``repo`` (``docker.io/<repo>:*``)."""
    base = f"{_STORE_PREFIX}{repo}"
    return base + ":", base + ";"   # ';' sorts right after ':'


def split_store_tag(name: str) -> tuple[str, str] | None:
    """(repository, tag) of a store tag under the default registry, else None."""
    if not name.startswith(_STORE_PREFIX):
        return None
    rest = name[len(_STORE_PREFIX):]
    repo, sep, tag = rest.rpartition(":")
    if not sep or "/" in tag:
        return None
    return repo, tag
