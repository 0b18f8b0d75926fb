"""Image references as Docker normalises them (distribution/reference grammar).

``busybox`` → ``docker.io/library/busybox:latest``; ``localhost:5000/a/b@sha256:…``
keeps its registry.  The store keys images by the full name; people see the familiar
short form, exactly as ``docker images`` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lamina.digest import Digest
from lamina.errors import InvalidReference

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
_LEGACY_REGISTRIES = {"index.docker.io", "registry-1.docker.io"}

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
MAX_NAME = 255


@dataclass(frozen=True, order=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str, default_tag: bool = True) -> Reference:
        """Parse ``[registry/]repo[:tag][@digest]``; a bare name gets ``:latest``."""
        if not text or text != text.strip():
            raise InvalidReference(f"invalid reference {text!r}")
        name, digest = text, None
        if "@" in text:
            name, _, dtext = text.partition("@")
            digest = Digest.parse(dtext)
        tag = None
        slash = name.rfind("/")
        colon = name.rfind(":")
        if colon > slash:
            name, tag = name[:colon], name[colon + 1:]
            if not _TAG.fullmatch(tag):
                raise InvalidReference(f"invalid tag {tag!r} in {text!r}")
        first, sep, rest = name.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
            registry, path = first, rest
            if not _DOMAIN.fullmatch(registry):
                raise InvalidReference(f"invalid registry {registry!r} in {text!r}")
            if registry in _LEGACY_REGISTRIES:
                registry = DEFAULT_REGISTRY
        else:
            registry, path = DEFAULT_REGISTRY, name
        if registry == DEFAULT_REGISTRY and "/" not in path:
            path = f"library/{path}"
        if not path:
            raise InvalidReference(f"invalid reference {text!r}: no repository name")
        for comp in path.split("/"):
            if not _COMPONENT.fullmatch(comp):
                if comp.lower() != comp and _COMPONENT.fullmatch(comp.lower()):
                    raise InvalidReference(f"invalid reference {text!r}: "
                                           "repository name must be lowercase")
                raise InvalidReference(f"invalid reference {text!r}: bad name component "
                                       f"{comp!r}")
        if len(registry) + 1 + len(path) > MAX_NAME:
            raise InvalidReference(f"invalid reference {text!r}: name longer than {MAX_NAME}")
        if tag is None and digest is None and default_tag:
            tag = DEFAULT_TAG
        return cls(registry, path, tag, digest)

    @property
    def name(self) -> str:
        """Fully qualified repository: ``docker.io/library/busybox``."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar_name(self) -> str:
        """What Docker shows: ``busybox``, ``me/app``, ``localhost:5000/app``."""
        if self.registry == DEFAULT_REGISTRY:
            if self.repository.startswith("library/") and self.repository.count("/") == 1:
                return self.repository[len("library/"):]
            return self.repository
        return self.name

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag, None)

    def with_digest(self, digest: Digest) -> Reference:
        return Reference(self.registry, self.repository, None, digest)

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()

    @property
    def familiar(self) -> str:
        return self.familiar_name + self._suffix()
